"""What a training run shows and records: a progress bar per stage, log lines, RUN/train_log.csv,
TensorBoard scalars in RUN/tb (when the optional `tensorboard` package is installed: the CSV log
holds the same numbers), and the cluster-usage watch (active clusters, marginal entropy,
a warning when the clusters collapse). Only rank 0 creates a Monitor.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from coincide.console import ElapsedColumn, EtaColumn, progress
from coincide.files import atomic_path
from coincide.run_folder import LOG_FILE, TB_DIR

if TYPE_CHECKING:
    from coincide.train.validation import HeldOut

NO_TENSORBOARD = (
    "TensorBoard is not installed, so this run logs to train_log.csv and its plots only; "
    "pip install 'coincide[tensorboard]' to also get TensorBoard logs in RUN/tb."
)
BASE_COLUMNS = ["step", "stage", "stage_step", "split", "total"]
EXTRA_COLUMNS = [
    "lr",
    "pairs_per_s",
    "active_clusters",
    "cluster_entropy",
    "auc_av",
    "auc_aa",
]


class ClusterWatch:
    """Cluster usage over a logging interval, on the device (no sync until `summary`).

    Counts arg-max assignments per cluster (K counters) and averages the entropy of each batch's
    soft marginal. A collapse is fewer active clusters than `fraction` of those that could be
    active (min(K, assignments counted)), or a marginal entropy below `fraction` of its ceiling
    log(min(K, batch)). None is reported during the first `grace_steps` of a stage: a
    cold-start head assigns most windows to few clusters until the learning rate has warmed up
    (seen at K = 1M: 401 active of 10,240 assignments after 20 steps, 10,000 after 80).
    """

    def __init__(self, k: int, fraction: float, device: torch.device, grace_steps: int = 0) -> None:
        self.k = k
        self.fraction = fraction
        self.grace_steps = grace_steps
        self.counts = torch.zeros(k, dtype=torch.float32, device=device)
        self.entropy_sum = torch.zeros((), device=device)
        self.batches = 0
        self.batch_size = 0

    def add(self, assignments: torch.Tensor, marginal: torch.Tensor) -> None:
        """assignments: arg-max clusters `(B,)`; marginal: mean assignment `(K,)`."""
        self.counts.index_add_(0, assignments, torch.ones_like(assignments, dtype=torch.float32))
        tiny = torch.finfo(marginal.dtype).tiny
        self.entropy_sum += -(marginal * marginal.clamp_min(tiny).log()).sum()
        self.batches += 1
        self.batch_size = int(assignments.shape[0])

    def summary(self, counts: torch.Tensor, stage_step: int) -> tuple[int, float, bool]:
        """(active clusters, mean marginal entropy, collapsed) for the interval ending at
        `stage_step` of its stage, then reset.

        counts: the assignment counts summed over ranks (`self.counts` in one process).
        """
        active = int((counts > 0).sum())
        possible = min(self.k, int(counts.sum()))
        entropy = float(self.entropy_sum) / max(1, self.batches)
        ceiling = math.log(max(2, min(self.k, self.batch_size)))
        collapsed = active < self.fraction * possible or entropy < self.fraction * ceiling
        collapsed = collapsed and stage_step > self.grace_steps
        self.counts.zero_()
        self.entropy_sum.zero_()
        self.batches = 0
        return active, entropy, collapsed


_TOLD_NO_TENSORBOARD = False


class Monitor:
    """Progress bar, console lines, CSV log and TensorBoard scalars of one run (rank 0 only)."""

    def __init__(
        self, run_dir: Path, loss_names: Sequence[str], resume_step: int, progress: bool
    ) -> None:
        self.run_dir = run_dir
        self.console = Console(stderr=False, highlight=False)
        self.columns = BASE_COLUMNS + list(loss_names) + EXTRA_COLUMNS
        self._csv_file = _open_log(run_dir / LOG_FILE, self.columns, resume_step)
        self._csv = csv.DictWriter(self._csv_file, fieldnames=self.columns)
        self._tb = _summary_writer(run_dir / TB_DIR, resume_step)
        global _TOLD_NO_TENSORBOARD
        if isinstance(self._tb, _NoTensorBoard) and not _TOLD_NO_TENSORBOARD:
            self.line(NO_TENSORBOARD)  # once per process: Table 3 trains many classifiers
            _TOLD_NO_TENSORBOARD = True
        self._show_progress = progress
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._collapsed = False

    @property
    def writer(self) -> Any:
        """The run's TensorBoard writer (other scalars, e.g. the QbE probe, go there too), or
        None without TensorBoard."""
        return None if isinstance(self._tb, _NoTensorBoard) else self._tb

    # -- console ---------------------------------------------------------------------------

    def line(self, text: str) -> None:
        """One log line (printed above the progress bar; paths are never wrapped)."""
        self.console.print(text, markup=False, soft_wrap=True)

    def warn(self, text: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {escape(text)}", soft_wrap=True)

    def start_stage(self, title: str, total: int, done: int, may_end_early: bool = False) -> None:
        """Open the progress bar of a stage of `total` steps (cap), `done` already taken;
        `may_end_early`: a plateau rule may end it before the cap, so the time left shown is
        an upper bound ("eta at most")."""
        if not self._show_progress:
            return
        self._progress = progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("{task.fields[losses]}  {task.fields[speed]}"),
            ElapsedColumn(),
            EtaColumn("eta at most" if may_end_early else "eta"),
            console=self.console,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            title, total=total, completed=done, losses="", speed=""
        )
        self._collapsed = False

    def advance(self, stage_step: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=stage_step)

    def end_stage(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        self._progress, self._task = None, None

    # -- records ---------------------------------------------------------------------------

    def log_train(
        self,
        step: int,
        stage: str,
        stage_step: int,
        losses: dict[str, float],
        lr: float,
        pairs_per_s: float,
        clusters: tuple[int, float, bool] | None,
    ) -> None:
        """Record the mean losses of a logging interval (and the cluster usage, if any)."""
        row: dict[str, Any] = {"split": "train", "lr": lr, "pairs_per_s": round(pairs_per_s, 1)}
        row.update({k: v for k, v in losses.items() if k in self.columns})
        for name, value in losses.items():
            self._tb.add_scalar(f"loss/{name}", value, step)
        self._tb.add_scalar("lr", lr, step)
        self._tb.add_scalar("speed/pairs_per_s", pairs_per_s, step)
        if clusters is not None:
            active, entropy, collapsed = clusters
            row.update(active_clusters=active, cluster_entropy=round(entropy, 4))
            self._tb.add_scalar("clusters/active", active, step)
            self._tb.add_scalar("clusters/marginal_entropy", entropy, step)
            if collapsed and not self._collapsed:
                self.warn(
                    f"clusters are collapsing in stage '{stage}' at step {step}: {active} active, "
                    f"marginal entropy {entropy:.2f} nats; consider a larger clustering.gamma."
                )
            self._collapsed = collapsed
        self._write(step, stage, stage_step, row)
        if self._progress is not None and self._task is not None:
            text = " ".join(f"{k} {v:.3f}" for k, v in losses.items())
            self._progress.update(self._task, losses=text, speed=f"{pairs_per_s:,.0f} pairs/s")

    def log_val(self, step: int, stage: str, stage_step: int, held: HeldOut) -> None:
        """Record a held-out measurement: the criterion as `total`, each term's loss in its own
        column, each coincidence term's AUC as `auc_<term>`."""
        self._tb.add_scalar("val/criterion", held.criterion, step)
        self._tb.add_scalar("val/coincidence_loss", held.coincidence, step)
        row: dict[str, Any] = {"split": "val", "total": held.criterion}
        for name, value in held.losses.items():
            self._tb.add_scalar(f"val/loss_{name}", value, step)
            if name in self.columns:
                row[name] = value
        for name, value in held.auc.items():
            self._tb.add_scalar(f"val/auc_{name}", value, step)
            if f"auc_{name}" in self.columns:
                row[f"auc_{name}"] = round(value, 5)
        self._write(step, stage, stage_step, row)

    def _write(self, step: int, stage: str, stage_step: int, row: dict[str, Any]) -> None:
        self._csv.writerow({"step": step, "stage": stage, "stage_step": stage_step, **row})
        self._csv_file.flush()  # a killed run keeps every line up to its last step

    def close(self) -> None:
        self.end_stage()
        self._tb.close()
        self._csv_file.close()


def _open_log(path: Path, columns: list[str], resume_step: int) -> Any:
    """Open the CSV log for appending, dropping rows newer than the resumed step (a killed run
    logged steps past its last checkpoint; they are trained again)."""
    if path.exists():
        previous = pd.read_csv(path)
        previous = previous[previous["step"] <= resume_step].reindex(columns=columns)
        with atomic_path(path) as tmp:
            previous.to_csv(tmp, index=False)
        return open(path, "a", newline="", encoding="utf-8")  # noqa: SIM115 (kept open: the log)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.DictWriter(handle, fieldnames=columns).writeheader()
    return open(path, "a", newline="", encoding="utf-8")  # noqa: SIM115 (kept open: the log)


class _NoTensorBoard:
    """What the monitor writes scalars to when TensorBoard is not installed: nothing (every
    scalar is also a column of RUN/train_log.csv)."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int) -> None:
        pass

    def close(self) -> None:
        pass


def _summary_writer(folder: Path, resume_step: int) -> Any:
    """A TensorBoard SummaryWriter over `folder`, or `_NoTensorBoard` when the optional
    `tensorboard` package is missing (torch raises ImportError then)."""
    # Imported here: TensorBoard takes seconds to import, and only rank 0 writes.
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return _NoTensorBoard()
    return SummaryWriter(str(folder), purge_step=resume_step + 1, flush_secs=10)


class Throughput:
    """Pairs per second between two calls of `rate`."""

    def __init__(self) -> None:
        self._time = time.perf_counter()
        self._pairs = 0

    def add(self, pairs: int) -> None:
        self._pairs += pairs

    def rate(self) -> float:
        now = time.perf_counter()
        rate = self._pairs / max(now - self._time, 1e-9)
        self._time, self._pairs = now, 0
        return rate

    def restart(self) -> None:
        """Forget the time since the last call (an evaluation or a checkpoint is not training)."""
        self._time, self._pairs = time.perf_counter(), 0
