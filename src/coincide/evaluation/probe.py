"""The learning curve of a training run: QbE of f on a held-out store, every few steps.

`TrainingProbe` (or `evaluate_during_training`) measures QbE mAP (same-media pairs left out) and
clip QbE mAP on a fixed, seeded subset of a held-out store and keeps the learning curve in
RUN/eval_curve.csv and in TensorBoard (tag `eval/qbe_map`). The training loop does not import
this module: `coincide.stages.train` gives it a probe factory (`coincide.train.loop.ProbeFactory`).
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch import nn

from coincide.errors import UserError
from coincide.evaluation.measure import (
    QBE_SEED,
    _mean_or_none,
    cap_windows,
    labeled_windows,
    window_qbe_per_class,
)
from coincide.evaluation.qbe import clip_qbe_average_precision_per_class
from coincide.evaluation.representations import embed_positions
from coincide.files import atomic_output
from coincide.run_folder import CURVE_FILE
from coincide.store.features import FeatureStore, open_store

CURVE_TAG = "eval/qbe_map"
DEFAULT_PROBE_WINDOWS = 2000


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
        where = f"the probe's subset of --test-store {self.store.root}"
        per_class = window_qbe_per_class(vectors, self.labels, self.media, where)
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
    with atomic_output(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        writer.writeheader()
        writer.writerows([*kept, row])


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
