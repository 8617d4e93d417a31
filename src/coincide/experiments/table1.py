"""`coincide reproduce table1`: the paper's Table 1, every row trained and measured the same way.

Each row is a configuration (a preset overlay on `--config small|paper`, see ROWS) except row b,
the log-mel input itself. For each row and seed:

    DIR/runs/<row>-s<seed>/       the run folder (`coincide train` layout; row b holds only
                                  representation.json), evaluated into eval/metrics.json
                                  (`coincide.stages.evaluate`: QbE mAP on the test store, shallow
                                  classifier mAP trained on the training store's labels)

A run whose eval/metrics.json exists is done and is neither retrained nor re-evaluated (delete
DIR/runs/*/eval to measure again, e.g. on another test store); a run interrupted in training
resumes from its checkpoint. Rows that need frames (any stage with
L_AV) are skipped, with a note, when the training store has none.

The table (DIR/table1.md, DIR/table1.csv, per-run numbers in DIR/table1_runs.csv, bars in
DIR/table1.png) gives the mean over seeds, ± the sample standard deviation when there are
several, and recovery = 100 (row - b) / (a - b) of the seed means, so b is 0 % and a 100 % by
definition. Learning curves (RUN/eval_curve.csv, when training logged them) are drawn in
DIR/table1_curves.png.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from coincide.config.settings import Config, load_config
from coincide.config.stage import StageSettings
from coincide.errors import UserError
from coincide.evaluation.measure import (
    DEFAULT_MAX_TRAIN_WINDOWS,
    labeled_windows,
    qbe_excludes_same_media,
)
from coincide.evaluation.metrics import recovery
from coincide.evaluation.probe import read_curve
from coincide.evaluation.representations import Pooling, write_fixed_representation
from coincide.run_folder import CURVE_FILE
from coincide.stages.evaluate import EvaluateSettings, read_metrics
from coincide.stages.evaluate import run as evaluate_run
from coincide.stages.train import train
from coincide.store.features import FeatureStore, open_store
from coincide.train.objective import stage_pair_kinds

BASELINE, TOPLINE = "b", "a"


@dataclass(frozen=True)
class Row:
    """One row of Table 1: its letter, its title in the paper and its configuration overlay
    (None for the fixed log-mel baseline)."""

    key: str
    title: str
    overlay: str | None


ROWS: tuple[Row, ...] = (
    Row("a", "Explicit Label Triplet (topline)", "row_a"),
    Row("b", "Log Mel Spectrogram (baseline)", None),
    Row("c", "Temporal Proximity Triplet [11]", "row_c"),
    Row("d", "AV Correspondence (VGG) [12]", "row_d"),
    Row("e", "AA Coincidence (L_AA)", "row_e"),
    Row("f", "AV Coincidence (L_AV)", "row_f"),
    Row("g", "· ResNet → VGG", "row_g"),
    Row("h", "· All-pairs → random negatives", "row_h"),
    Row("i", "· ΔT = 10 s → 1 s", "row_i"),
    Row("j", "AA+AV Coincidence (L_coin)", "row_j"),
    Row("k", "AA+AV Coincidence + Cluster (L_joint)", "row_k"),
)
ROW_KEYS = tuple(row.key for row in ROWS)


@dataclass(frozen=True)
class Table1Settings(StageSettings):
    """What `reproduce table1` was asked to do (the CLI options); kept in DIR/settings.json."""

    command: ClassVar[str] = "reproduce table1"

    train_store: Path
    test_store: Path
    out: Path
    config: str = "small"
    rows: tuple[str, ...] = ROW_KEYS
    seeds: tuple[int, ...] = (0,)
    overrides: tuple[str, ...] = ()
    logmel_pooling: Pooling = "flatten"
    max_train_windows: int | None = DEFAULT_MAX_TRAIN_WINDOWS
    eval_every: int = 0


def parse_rows(text: str) -> tuple[str, ...]:
    """`"a,b,f"` -> ("a", "b", "f") in table order; a and b are always included (recovery
    needs the baseline and the topline)."""
    asked = {part.strip().lower() for part in text.split(",") if part.strip()}
    unknown = sorted(asked - set(ROW_KEYS))
    if unknown:
        raise UserError(
            f"--row names unknown row(s) {', '.join(unknown)}; use letters of {','.join(ROW_KEYS)}."
        )
    asked |= {BASELINE, TOPLINE}
    return tuple(key for key in ROW_KEYS if key in asked)


def row_config(row: Row, settings: Table1Settings, seed: int) -> Config:
    """The resolved training configuration of a trained row for one seed."""
    assert row.overlay is not None
    return load_config([settings.config, row.overlay], [*settings.overrides, f"seed={seed}"])


def needs_frames(cfg: Config, audio_only: bool = False) -> bool:
    """Whether a configuration trains on frames: any stage with a loss term on AV pairs. On an
    audio-only store training runs `curriculum.audio_only_stages` (see coincide.train.loop), so
    those are the stages that count there."""
    return any("av" in stage_pair_kinds(stage) for stage in cfg.curriculum.stages_for(audio_only))


def run_folder(out: Path, key: str, seed: int) -> Path:
    """DIR/runs/<row>-s<seed>."""
    return out / "runs" / f"{key}-s{seed}"


def run(settings: Table1Settings) -> Path:
    """Train (or resume) and evaluate every supported row and seed, then write the table.

    Returns the path of DIR/table1.md.
    """
    # -- the stores: frames decide the AV rows, labels are needed for a and the metrics ---
    train_store = open_store(settings.train_store)
    test_store = open_store(settings.test_store)
    _check_labels(train_store, "--store", "to train row a and the shallow classifiers")
    _check_labels(test_store, "--test-store", "to measure retrieval and classification")
    has_frames = bool(train_store.index["has_frame"].any())
    rows = [row for row in ROWS if row.key in settings.rows]

    # -- each row and seed: train unless evaluated, then evaluate -------------------------
    skipped: dict[str, str] = {}
    audio_only_stages: dict[str, list[str]] = {}
    results: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        configs = {}
        if row.overlay is not None:
            configs = {seed: row_config(row, settings, seed) for seed in settings.seeds}
            if not has_frames and needs_frames(configs[settings.seeds[0]], audio_only=True):
                skipped[row.key] = "needs frames; the training store is audio-only"
                continue
            if not has_frames:
                stages = configs[settings.seeds[0]].curriculum.stages_for(audio_only=True)
                audio_only_stages[row.key] = [stage.name for stage in stages]
        results[row.key] = []
        for seed in settings.seeds:
            folder = run_folder(settings.out, row.key, seed)
            metrics = read_metrics(folder)
            if metrics is not None and not qbe_excludes_same_media(metrics):
                # Written before QbE left same-media pairs out: its qbe_map is the old figure.
                print(f"== row {row.key} seed {seed}: QbE of the old definition, measuring again")
                metrics = None
            if metrics is None:
                print(f"== row {row.key} seed {seed}: {row.title} -> {folder}", flush=True)
                if row.overlay is None:
                    write_fixed_representation(folder, settings.logmel_pooling)
                else:
                    train(
                        configs[seed],
                        settings.train_store,
                        folder,
                        eval_store=settings.test_store if settings.eval_every else None,
                        eval_every=settings.eval_every,
                    )
                metrics = evaluate_run(
                    EvaluateSettings(
                        folder,
                        settings.test_store,
                        settings.train_store,
                        shallow_seed=seed,
                        max_train_windows=settings.max_train_windows,
                    )
                )
            else:
                print(f"== row {row.key} seed {seed}: done already ({folder})", flush=True)
            results[row.key].append({"seed": seed, "folder": str(folder), **metrics})

    # -- the table ------------------------------------------------------------------------
    summary = summarise(rows, results)
    settings.out.mkdir(parents=True, exist_ok=True)
    settings.write(settings.out)
    table_path = settings.out / "table1.md"
    text = table_markdown(summary, skipped, settings, audio_only_stages)
    table_path.write_text(text, encoding="utf-8")
    write_csv(settings.out / "table1.csv", summary)
    write_runs_csv(settings.out / "table1_runs.csv", results)
    plot_bars(settings.out / "table1.png", summary)
    plot_curves(settings.out / "table1_curves.png", rows, settings)
    print(table_path.read_text(encoding="utf-8"), flush=True)
    return table_path


def _check_labels(store: FeatureStore, flag: str, why: str) -> None:
    if len(labeled_windows(store)) == 0:
        raise UserError(
            f"{flag} {store.root} has no clip labels, which Table 1 needs {why}; attach them "
            "with `coincide add-labels --store STORE --labels LABELS.csv`."
        )


# ---------------------------------------------------------------------------------------------
# Summary


# Printed beside the window QbE (which leaves pairs of windows of one media out): the QbE of one
# mean embedding per test clip, and the old window QbE that counted same-media pairs.
EXTRA_METRICS = ("clip_qbe_map", "qbe_map_same_media")


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else None
    return float(array.mean()), std


def summarise(
    rows: Sequence[Row], results: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """One dict per evaluated row: means, spreads and recoveries of both metrics."""
    summary: list[dict[str, Any]] = []
    for row in rows:
        runs = results.get(row.key)
        if not runs:
            continue
        entry: dict[str, Any] = {"row": row.key, "title": row.title, "seeds": len(runs)}
        entry["representation"] = runs[0]["representation"]
        for metric in ("qbe_map", "shallow_map", *EXTRA_METRICS):
            values = [r[metric] for r in runs if r.get(metric) is not None]
            mean, std = _mean_std(values) if values else (math.nan, None)
            entry[metric], entry[f"{metric}_std"], entry[f"{metric}_runs"] = mean, std, values
        summary.append(entry)
    by_key = {entry["row"]: entry for entry in summary}
    for metric in ("qbe_map", "shallow_map"):
        baseline, topline = by_key[BASELINE][metric], by_key[TOPLINE][metric]
        for entry in summary:
            # The range must run upwards: a topline at or below the baseline (an undertrained
            # topline) has no range to recover, and the ratio would read as nonsense.
            if math.isnan(entry[metric]) or topline <= baseline:
                entry[f"{metric}_recovery"], entry[f"{metric}_recovery_std"] = math.nan, None
                continue
            per_run = [recovery(v, baseline, topline) for v in entry[f"{metric}_runs"]]
            # The mean of per-seed recoveries is the recovery of the mean (it is linear).
            entry[f"{metric}_recovery"], entry[f"{metric}_recovery_std"] = _mean_std(per_run)
    return summary


def _number(mean: float, std: float | None, digits: int = 3) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def _percent(mean: float, std: float | None) -> str:
    if math.isnan(mean):
        return "n/a"
    # round() to an int first: a recovery of -0.3 % reads "0%", not "-0%".
    return f"{round(mean)}%" + ("" if std is None else f" ± {round(std)}")


def table_markdown(
    summary: Sequence[dict[str, Any]],
    skipped: dict[str, str],
    settings: Table1Settings,
    audio_only_stages: dict[str, list[str]] | None = None,
) -> str:
    """Table 1 in the paper's layout, with what it was measured on."""
    seeds = ",".join(str(s) for s in settings.seeds)
    lines = [
        "# Table 1: fixed representations (QbE retrieval and shallow classification)",
        "",
        f"Training store `{settings.train_store}`, test store `{settings.test_store}`, "
        f"config `{settings.config}`"
        + (f" with `{' '.join(settings.overrides)}`" if settings.overrides else "")
        + f", seeds {seeds}. Mean over seeds (± sample std when several); recovery = "
        "100 (row − b) / (a − b).",
        "",
        "| Representation | QbE mAP | QbE recovery "
        "| Classification mAP | Classification recovery "
        "| Clip QbE mAP | QbE mAP, same-media pairs counted |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in summary:
        lines.append(
            f"| {e['row']}. {e['title']} "
            f"| {_number(e['qbe_map'], e['qbe_map_std'])} "
            f"| {_percent(e['qbe_map_recovery'], e['qbe_map_recovery_std'])} "
            f"| {_number(e['shallow_map'], e['shallow_map_std'])} "
            f"| {_percent(e['shallow_map_recovery'], e['shallow_map_recovery_std'])} "
            f"| {_number(e['clip_qbe_map'], e['clip_qbe_map_std'])} "
            f"| {_number(e['qbe_map_same_media'], e['qbe_map_same_media_std'])} |"
        )
    baseline = next(e for e in summary if e["row"] == BASELINE)
    lines += [
        "",
        f"Row b is `{baseline['representation']}` (see coincide.evaluation.representations). "
        "QbE mAP "
        "leaves out pairs of windows of the same media (they share the clip's label and all its "
        "nuisances, so even one random vector per clip scores above chance when they count); "
        "clip QbE ranks one mean embedding per test clip; the last column is the old window "
        "QbE that counted same-media pairs, for comparison with earlier tables.",
    ]
    topline = next(e for e in summary if e["row"] == TOPLINE)
    for metric, name in (("qbe_map", "QbE"), ("shallow_map", "Classification")):
        if topline[metric] <= baseline[metric]:
            lines.append(
                f"{name} recovery is n/a: the topline (row a, {topline[metric]:.3f}) does not "
                f"beat the baseline (row b, {baseline[metric]:.3f}) on this metric."
            )
    if audio_only_stages:
        ran = "; ".join(f"{key}: {' -> '.join(names)}" for key, names in audio_only_stages.items())
        lines.append(
            "The training store has no frames, so each trained row ran its "
            f"`curriculum.audio_only_stages` ({ran})."
        )
    for key, reason in skipped.items():
        title = next(r.title for r in ROWS if r.key == key)
        lines.append(f"Row {key} ({title}) skipped: {reason}.")
    return "\n".join(lines) + "\n"


_CSV_COLUMNS = [
    "row",
    "title",
    "seeds",
    "qbe_map",
    "qbe_map_std",
    "qbe_map_recovery",
    "qbe_map_recovery_std",
    "shallow_map",
    "shallow_map_std",
    "shallow_map_recovery",
    "shallow_map_recovery_std",
    "clip_qbe_map",
    "clip_qbe_map_std",
    "qbe_map_same_media",
    "qbe_map_same_media_std",
]


def write_csv(path: Path, summary: Sequence[dict[str, Any]]) -> None:
    """One line per row: the numbers of the markdown table, unrounded."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=_CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(summary)


def write_runs_csv(path: Path, results: dict[str, list[dict[str, Any]]]) -> None:
    """One line per run (row, seed): both metrics and the run folder."""
    columns = ["row", "seed", "qbe_map", "shallow_map", *EXTRA_METRICS, "representation", "folder"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for key, runs in results.items():
            writer.writerows({"row": key, **r} for r in runs)


# ---------------------------------------------------------------------------------------------
# Plots


def plot_bars(path: Path, summary: Sequence[dict[str, Any]]) -> None:
    """Two bar panels (QbE mAP, classification mAP) per row with seed spread as error bars and
    the baseline / topline levels as lines."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display
    import matplotlib.pyplot as plt

    keys = [e["row"] for e in summary]
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 0.9 * len(keys) + 3), 3.6), sharey=False)
    panels = (("qbe_map", "QbE retrieval mAP"), ("shallow_map", "Classification mAP"))
    for ax, (metric, title) in zip(axes, panels, strict=True):
        means = [e[metric] for e in summary]
        errors = [e[f"{metric}_std"] or 0.0 for e in summary]
        colours = [
            "tab:gray" if k == BASELINE else "tab:green" if k == TOPLINE else "tab:blue"
            for k in keys
        ]
        ax.bar(keys, means, yerr=errors, color=colours, capsize=3)
        by_key = dict(zip(keys, means, strict=True))
        ax.axhline(by_key[BASELINE], color="tab:gray", linestyle="--", linewidth=1)
        ax.axhline(by_key[TOPLINE], color="tab:green", linestyle="--", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("Table 1 row")
        ax.set_ylim(0, 1.05 * max([m for m in means if not math.isnan(m)] + [0.01]))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(path: Path, rows: Sequence[Row], settings: Table1Settings) -> Path | None:
    """QbE mAP against training step of every run that logged a curve (None when none did)."""
    curves = []
    for row in rows:
        for seed in settings.seeds:
            points = read_curve(run_folder(settings.out, row.key, seed) / CURVE_FILE)
            if points:
                curves.append((f"{row.key} s{seed}", points))
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, points in curves:
        ax.plot([p["step"] for p in points], [p["qbe_map"] for p in points], label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out QbE mAP")
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
