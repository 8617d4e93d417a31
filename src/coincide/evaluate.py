"""`coincide evaluate`: a representation measured the paper's way (section 4.1, Table 1).

The unit of evaluation is the 0.96 s window ("segment retrieval" in Table 1); a window carries
the clip-level labels of its media, and windows of unlabeled media are left out.

- QbE retrieval mAP (`coincide.qbe.qbe_map`) over the labeled windows of the test store,
  with the metric's seeded per-class sample (100 positives + 100 negatives per class) and
  sampling seed `QBE_SEED` for every run, so all rows of a table are scored on the same pairs.
  Three figures: `qbe_map` leaves out every pair of two windows of the same media (they share
  the clip's labels and its recording, so they reward knowing the clip, not the class: one
  random vector per clip scores above chance when they count); `qbe_map_same_media` counts
  them (the earlier definition, kept beside it for comparison); `clip_qbe_map` ranks one mean
  embedding per media (`coincide.qbe.clip_qbe_map`). A metrics.json without
  `qbe_map_same_media` was written before the change, and its `qbe_map` counted same-media
  pairs (`qbe_excludes_same_media`).
- Shallow classifier mAP (`coincide.metrics.shallow_classifier_map`): one 512-unit hidden layer
  trained on the frozen representation of the training store's labeled windows and scored on
  the test store's. Without a training store, the labeled test media are split in two halves
  by a seeded draw over media (`SPLIT_SEED`; all windows of a clip fall on one side): the
  classifier trains on one half and is scored on the other.
  The training windows are capped at `max_train_windows` (a seeded subset, the same for every
  representation) to bound the cost of the 6144-d log-mel baseline on CPU.

Outputs in RUN/eval/: metrics.json (numbers and what they were measured on) and metrics.md.

During training, `TrainingProbe` (or `evaluate_during_training`) measures QbE mAP (same-media
pairs left out) and clip QbE mAP on a fixed, seeded subset of a held-out store and keeps the
learning curve in RUN/eval_curve.csv and in TensorBoard (tag `eval/qbe_map`).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from coincide.errors import UserError
from coincide.metrics import shallow_classifier_map
from coincide.qbe import clip_qbe_average_precision_per_class, qbe_average_precision_per_class
from coincide.representations import (
    EncoderRepresentation,
    Representation,
    embed_positions,
    read_fixed_representation,
)
from coincide.store.features import FeatureStore, open_store
from coincide.store.layout import read_json_or_none

EVAL_DIR = "eval"
METRICS_FILE = "metrics.json"
METRICS_TABLE = "metrics.md"
CURVE_FILE = "eval_curve.csv"
CURVE_TAG = "eval/qbe_map"
QBE_SEED = 0
SPLIT_SEED = 0
DEFAULT_MAX_TRAIN_WINDOWS = 20000
DEFAULT_PROBE_WINDOWS = 2000


@dataclass(frozen=True)
class LabeledWindows:
    """The labeled windows of a store: global `positions` (n,), their `labels` (n lists of
    class names) and `media` ids (n,)."""

    positions: np.ndarray
    labels: list[list[str]]
    media: np.ndarray

    def __len__(self) -> int:
        return len(self.positions)

    def subset(self, keep: np.ndarray) -> LabeledWindows:
        """The windows at indices `keep` (into this set), in that order."""
        return LabeledWindows(
            self.positions[keep], [self.labels[i] for i in keep], self.media[keep]
        )


def labeled_windows(store: FeatureStore) -> LabeledWindows:
    """Every window of `store` whose media has at least one label, in global order."""
    index = store.index
    labels = index["labels"].tolist()
    keep = np.flatnonzero([len(names) > 0 for names in labels]).astype(np.int64)
    return LabeledWindows(
        keep, [list(labels[i]) for i in keep], index["media_id"].to_numpy(dtype=str)[keep]
    )


def split_by_media(
    windows: LabeledWindows, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into `windows`) of a seeded half/half split over media: (train, test).

    The draw depends only on the seed and the sorted media ids. Needs at least 2 media.
    """
    media = np.unique(windows.media)
    if len(media) < 2:
        raise UserError(
            "the test store has labeled windows from fewer than 2 media, so it cannot be split "
            "for the shallow classifier; pass --store with a labeled training store."
        )
    order = np.random.default_rng([seed, 0xC1A55]).permutation(len(media))
    train_media = media[np.sort(order[: len(media) // 2])]
    is_train = np.isin(windows.media, train_media)
    return np.flatnonzero(is_train), np.flatnonzero(~is_train)


def cap_windows(n: int, limit: int | None, seed: int = SPLIT_SEED) -> np.ndarray:
    """Sorted indices of a seeded subset of `min(n, limit)` of `n` windows (all when no limit)."""
    if limit is None or n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 0xCA9]).choice(n, size=limit, replace=False))


def evaluate_representation(
    representation: Representation,
    test_store: FeatureStore,
    train_store: FeatureStore | None = None,
    *,
    shallow_seed: int = 0,
    max_train_windows: int | None = DEFAULT_MAX_TRAIN_WINDOWS,
    shallow: bool = True,
) -> dict[str, Any]:
    """QbE mAP and shallow-classifier mAP of one representation (module docstring: protocol).

    Args:
        representation: maps windows to vectors `(n, d)`.
        test_store: labeled store to retrieve in and to score the classifier on.
        train_store: labeled store to train the classifier on; None splits the test store.
        shallow_seed: the classifier's initialisation / batching seed.
        max_train_windows: cap on the classifier's training windows (None: all).
        shallow: also train and score the shallow classifier.

    Returns:
        A JSON-ready dict: `qbe_map` (same-media pairs left out) and its `qbe_per_class`,
        `qbe_map_same_media` (counted), `clip_qbe_map` (None when no class has 2 clips and a
        clip without it), `shallow_map` (or None) and the sizes.
    """
    test = labeled_windows(test_store)
    if len(test) == 0:
        raise UserError(
            f"the test store {test_store.root} has no labeled windows; attach clip labels with "
            "`coincide add-labels --store STORE --labels LABELS.csv` first."
        )
    started = time.monotonic()
    test_vectors = representation.embed(test_store, test.positions)
    per_class = qbe_average_precision_per_class(
        test_vectors, test.labels, media=test.media, seed=QBE_SEED
    )
    if not per_class:
        raise UserError(
            f"no class of the test store {test_store.root} has labeled windows from 2 media and "
            "a window without it, so QbE cannot be scored; evaluate on a store with several "
            "clips per class."
        )
    same_media = qbe_average_precision_per_class(
        test_vectors, test.labels, media=test.media, same_media_pairs=True, seed=QBE_SEED
    )
    clip = clip_qbe_average_precision_per_class(
        test_vectors, test.labels, test.media, seed=QBE_SEED
    )
    result: dict[str, Any] = {
        "representation": representation.name,
        "embed_dim": int(test_vectors.shape[1]),
        "test_store": str(test_store.root),
        "test_windows": len(test),
        "test_clips": len(np.unique(test.media)),
        "qbe_map": _mean_or_none(per_class),
        "qbe_classes": len(per_class),
        "qbe_per_class": per_class,
        "qbe_map_same_media": _mean_or_none(same_media),
        "qbe_classes_same_media": len(same_media),
        "clip_qbe_map": _mean_or_none(clip),
        "clip_qbe_classes": len(clip),
        "qbe_seed": QBE_SEED,
        "shallow_map": None,
    }
    if shallow:
        result.update(
            _shallow(
                representation, test, test_vectors, train_store, shallow_seed, max_train_windows
            )
        )
    result["seconds"] = round(time.monotonic() - started, 2)
    return result


def _mean_or_none(per_class: dict[str, float]) -> float | None:
    """The mAP of a per-class mapping, None when no class was scored."""
    return float(np.mean(list(per_class.values()))) if per_class else None


def qbe_excludes_same_media(metrics: dict[str, Any]) -> bool:
    """Whether a metrics dict (RUN/eval/metrics.json) was measured with same-media pairs left
    out of `qbe_map`; one written before that change has no `qbe_map_same_media`, and its
    `qbe_map` counted them."""
    return "qbe_map_same_media" in metrics


def _shallow(
    representation: Representation,
    test: LabeledWindows,
    test_vectors: np.ndarray,
    train_store: FeatureStore | None,
    seed: int,
    max_train_windows: int | None,
) -> dict[str, Any]:
    """Train and score the shallow classifier; the split it used goes into the result."""
    if train_store is None:
        train_idx, test_idx = split_by_media(test)
        train_idx = train_idx[cap_windows(len(train_idx), max_train_windows)]
        train_vectors, train_labels = test_vectors[train_idx], [test.labels[i] for i in train_idx]
        scored_vectors, scored_labels = test_vectors[test_idx], [test.labels[i] for i in test_idx]
        split = "test store split in half by media"
    else:
        train = labeled_windows(train_store)
        if len(train) == 0:
            raise UserError(
                f"the training store {train_store.root} has no labeled windows; attach clip "
                "labels with `coincide add-labels` or leave out --store."
            )
        train = train.subset(cap_windows(len(train), max_train_windows))
        train_vectors, train_labels = (
            representation.embed(train_store, train.positions),
            train.labels,
        )
        scored_vectors, scored_labels = test_vectors, test.labels
        split = f"trained on {train_store.root}"
    # Classes seen only on one side still count: the union keeps the columns aligned.
    score = shallow_classifier_map(
        train_vectors, train_labels, scored_vectors, scored_labels, seed=seed
    )
    return {
        "shallow_map": score,
        "shallow_split": split,
        "shallow_train_windows": len(train_labels),
        "shallow_test_windows": len(scored_labels),
        "shallow_seed": seed,
    }


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


def run(
    run_dir: Path,
    test_store: Path,
    train_store: Path | None = None,
    *,
    shallow_seed: int = 0,
    max_train_windows: int | None = DEFAULT_MAX_TRAIN_WINDOWS,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Evaluate a run folder on a test store; writes RUN/eval/metrics.json and metrics.md."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(
            f"run folder {run_dir} does not exist; give a run folder (from `coincide train`)."
        )
    # -- representation and stores
    representation = run_representation(run_dir, device)
    test = open_store(test_store)
    train = open_store(train_store) if train_store is not None else None
    # -- measure
    metrics = evaluate_representation(
        representation,
        test,
        train,
        shallow_seed=shallow_seed,
        max_train_windows=max_train_windows,
    )
    metrics["run"] = str(run_dir)
    # -- write
    write_metrics(run_dir, metrics)
    return metrics


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> Path:
    """Write RUN/eval/metrics.json (atomically, last: its presence marks the run as evaluated)
    and RUN/eval/metrics.md. Returns the JSON path."""
    out = Path(run_dir) / EVAL_DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS_TABLE).write_text(metrics_markdown(metrics), encoding="utf-8")
    path = out / METRICS_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(metrics, indent=1, sort_keys=True), encoding="utf-8")
    tmp.replace(path)
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


class ScalarWriter(Protocol):
    """What the probe needs of a TensorBoard SummaryWriter."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int) -> None: ...


class TrainingProbe:
    """QbE mAP of the audio encoder on a fixed subset of a held-out store, during training.

    The subset (up to `max_windows` labeled windows, seeded) is drawn once; each measurement
    reads its log-mel windows from the store (memory-mapped, so the page cache serves repeats),
    runs one forward pass over them and scores the QbE sample (100 + 100 windows per class,
    pairs of windows of one media left out), and the clip QbE of the subset's windows averaged
    per media (NaN when no class has 2 clips and a clip without it in the subset).
    Each call appends `step,qbe_map,clip_qbe_map,windows,classes,seconds` to
    RUN/eval_curve.csv, dropping rows at or after `step` first (a resumed run redoes those
    steps), and logs `eval/qbe_map` to `writer` when one is given.
    """

    def __init__(
        self,
        eval_store: FeatureStore | Path,
        run_dir: Path,
        *,
        max_windows: int = DEFAULT_PROBE_WINDOWS,
        seed: int = 0,
        writer: ScalarWriter | None = None,
        batch_size: int = 256,
    ) -> None:
        store = eval_store if isinstance(eval_store, FeatureStore) else open_store(eval_store)
        windows = labeled_windows(store)
        if len(windows) == 0:
            raise UserError(
                f"--test-store {store.root} has no labeled windows; QbE needs class labels, so "
                "give a store ingested with --labels."
            )
        windows = windows.subset(cap_windows(len(windows), max_windows, seed))
        self.store = store
        self.positions = windows.positions
        self.labels = windows.labels
        self.media = windows.media
        self.run_dir = Path(run_dir)
        self.writer = writer
        self.batch_size = batch_size

    def __call__(self, encoder: nn.Module, step: int) -> float:
        """Measure, record and return QbE mAP (same-media pairs left out) of `encoder` at
        training step `step`."""
        started = time.monotonic()
        device = next(encoder.parameters()).device
        vectors = embed_positions(encoder, self.store, self.positions, self.batch_size, device)
        per_class = qbe_average_precision_per_class(
            vectors, self.labels, media=self.media, seed=QBE_SEED
        )
        if not per_class:
            raise UserError(
                f"no class of --test-store {self.store.root} has labeled windows from 2 media "
                "and a window without it in the probe subset; use a held-out store with several "
                "clips per class."
            )
        score = float(np.mean(list(per_class.values())))
        clip = _mean_or_none(
            clip_qbe_average_precision_per_class(vectors, self.labels, self.media, seed=QBE_SEED)
        )
        row = {
            "step": int(step),
            "qbe_map": round(score, 6),
            "clip_qbe_map": float("nan") if clip is None else round(clip, 6),
            "windows": len(self.positions),
            "classes": len(per_class),
            "seconds": round(time.monotonic() - started, 3),
        }
        append_curve_row(self.run_dir / CURVE_FILE, row)
        if self.writer is not None:
            self.writer.add_scalar(CURVE_TAG, score, int(step))
        return score


def append_curve_row(path: Path, row: dict[str, Any]) -> None:
    """Append `row` to the learning-curve CSV, first dropping rows with step >= row['step']."""
    kept: list[dict[str, str]] = []
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            kept = [r for r in csv.DictReader(f) if int(r["step"]) < int(row["step"])]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        writer.writeheader()
        writer.writerows([*kept, row])
    tmp.replace(path)


def read_curve(path: Path) -> list[dict[str, float]]:
    """The rows of an eval_curve.csv as numbers (empty list when there is none). A cell left
    empty (a row written before its column existed, kept by a resumed run) reads as NaN."""
    if not Path(path).is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [
            {k: float(v) if v != "" else float("nan") for k, v in r.items()}
            for r in csv.DictReader(f)
        ]


def evaluate_during_training(
    encoder: nn.Module,
    eval_store: FeatureStore | Path,
    step: int,
    run_dir: Path,
    writer: ScalarWriter | None = None,
) -> float:
    """One-off form of `TrainingProbe` (it redraws the subset each call; a training loop that
    probes often should build one `TrainingProbe` and call it)."""
    return TrainingProbe(eval_store, run_dir, writer=writer)(encoder, step)
