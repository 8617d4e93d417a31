"""`coincide evaluate RUN --test-store STORE`: a run's representation (f of its best held-out
checkpoint, or the fixed representation of Table 1 row b) measured the paper's way (section
4.1): QbE mAP with same-media pairs left out and beside it with them, clip-level QbE, and the
shallow classifier's mAP (what each is and how it is sampled: `coincide.evaluation.measure`).

Outputs in RUN/eval/: metrics.json (numbers and what they were measured on), metrics.md and
settings.json (`EvaluateSettings`).
The learning curve during training is `coincide.evaluation.probe`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from coincide.config.stage import StageSettings
from coincide.errors import UserError
from coincide.evaluation.measure import (
    DEFAULT_MAX_TRAIN_WINDOWS,
    evaluate_representation,
    qbe_excludes_same_media,
)
from coincide.evaluation.representations import (
    EncoderRepresentation,
    Representation,
    read_fixed_representation,
)
from coincide.files import write_json_atomic
from coincide.run_folder import EVAL_DIR, METRICS_FILE, METRICS_TABLE
from coincide.store.features import open_store
from coincide.store.layout import read_json_or_none

# ---------------------------------------------------------------------------------------------
# A run folder


def run_representation(
    run_dir: Path, device: torch.device | None = None, batch_size: int = 512
) -> Representation:
    """What a run folder represents: its fixed representation, or f of its best held-out
    checkpoint (`coincide.train.checkpoint.run_checkpoint`)."""
    fixed = read_fixed_representation(run_dir)
    if fixed is not None:
        return fixed
    from coincide.train.checkpoint import load_models, run_checkpoint

    checkpoint = run_checkpoint(run_dir)
    models = load_models(checkpoint, map_location=device or torch.device("cpu"))
    return EncoderRepresentation(
        models["audio"], name="encoder", batch_size=batch_size, device=device
    )


@dataclass(frozen=True)
class EvaluateSettings(StageSettings):
    """`coincide evaluate`: the run, the labeled test store, and the shallow classifier's
    training store (None: half the test store's media), seed and window cap."""

    command: ClassVar[str] = "evaluate"
    run: Path
    test_store: Path
    train_store: Path | None = None
    shallow_seed: int = 0
    max_train_windows: int | None = DEFAULT_MAX_TRAIN_WINDOWS


def run(settings: EvaluateSettings, device: torch.device | None = None) -> dict[str, Any]:
    """Evaluate a run folder on a test store; writes RUN/eval/metrics.json and metrics.md, and
    the settings in RUN/eval/settings.json."""
    run_dir = Path(settings.run)
    if not run_dir.is_dir():
        raise UserError(
            f"run folder {run_dir} does not exist; give a run folder (from `coincide train`)."
        )
    # -- representation and stores
    representation = run_representation(run_dir, device)
    test = open_store(settings.test_store)
    train = open_store(settings.train_store) if settings.train_store is not None else None
    # -- measure
    metrics = evaluate_representation(
        representation,
        test,
        train,
        shallow_seed=settings.shallow_seed,
        max_train_windows=settings.max_train_windows,
    )
    metrics["run"] = str(run_dir)
    # -- write
    write_metrics(run_dir, metrics)
    settings.write(run_dir / EVAL_DIR)
    return metrics


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> Path:
    """Write RUN/eval/metrics.json (atomically, last: its presence marks the run as evaluated)
    and RUN/eval/metrics.md. Returns the JSON path."""
    out = Path(run_dir) / EVAL_DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS_TABLE).write_text(metrics_markdown(metrics), encoding="utf-8")
    path = out / METRICS_FILE
    write_json_atomic(path, metrics, sort_keys=True)
    return path


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    """RUN/eval/metrics.json, or None when the run has not been evaluated."""
    path = Path(run_dir) / EVAL_DIR / METRICS_FILE
    return read_json_or_none(path, "delete it to evaluate the run again")


def metrics_markdown(metrics: dict[str, Any]) -> str:
    """A small markdown table of one evaluation (also of a metrics.json written before
    same-media pairs were left out, whose one QbE figure is labelled as counting them)."""
    shallow = metrics.get("shallow_map")
    qbe = f"{metrics['qbe_map']:.3f} over {metrics['qbe_classes']} classes"
    if qbe_excludes_same_media(metrics):
        clip = metrics.get("clip_qbe_map")
        qbe_rows = [
            ("QbE retrieval mAP", f"{qbe} (pairs of windows of one media left out)"),
            (
                "QbE retrieval mAP, same media counted",
                f"{metrics['qbe_map_same_media']:.3f} over "
                f"{metrics['qbe_classes_same_media']} classes (the old definition, for "
                "comparison: pairs of windows of one media counted)",
            ),
            (
                "clip QbE retrieval mAP",
                "not measured (no class has 2 labeled clips and a clip without it)"
                if clip is None
                else f"{clip:.3f} over {metrics['clip_qbe_classes']} classes (one mean "
                f"embedding per media, {metrics['test_clips']} clips)",
            ),
        ]
    else:
        qbe_rows = [
            (
                "QbE retrieval mAP, same media counted",
                f"{qbe} (the old definition: pairs of windows of one media counted; evaluate "
                "again for the figure without them)",
            )
        ]
    rows = [
        ("representation", f"{metrics['representation']} (d = {metrics['embed_dim']})"),
        ("test store", f"{metrics['test_store']} ({metrics['test_windows']} labeled windows)"),
        *qbe_rows,
        (
            "shallow classifier mAP",
            "not measured"
            if shallow is None
            else f"{shallow:.3f} ({metrics['shallow_split']}, "
            f"{metrics['shallow_train_windows']} train / {metrics['shallow_test_windows']} "
            "test windows)",
        ),
    ]
    lines = ["| metric | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    per_class = metrics.get("qbe_per_class", {})
    if per_class:
        lines += ["", "| class | QbE AP |", "|---|---|"]
        lines += [f"| {name} | {ap:.3f} |" for name, ap in sorted(per_class.items())]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# During training
