"""After a stage: its loss curves as a PNG, and a one-line summary per stage (from the CSV log).

Both read RUN/train_log.csv, so they also cover the stages a resumed run trained before it was
killed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from coincide.run_folder import LOG_FILE, PLOTS_DIR
from coincide.train.monitor import EXTRA_COLUMNS

if TYPE_CHECKING:
    from coincide.config.settings import StageConfig
    from coincide.train.position import Position

_NOT_LOSSES = {"step", "stage", "stage_step", "split", *EXTRA_COLUMNS}


def read_log(run_dir: Path) -> pd.DataFrame:
    """RUN/train_log.csv as a DataFrame (empty when there is none yet)."""
    path = run_dir / LOG_FILE
    return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["step", "stage", "split"])


def plot_stage(run_dir: Path, stage_number: int, stage: str) -> Path | None:
    """Plot the training loss terms and the held-out loss of one stage against the global step.

    Writes RUN/plots/stage<N>_<name>.png and returns its path (None when nothing was logged).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; no display
    import matplotlib.pyplot as plt

    log = read_log(run_dir)
    rows = log[log["stage"] == stage]
    train, val = rows[rows["split"] == "train"], rows[rows["split"] == "val"]
    if train.empty and val.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for column in [c for c in log.columns if c not in _NOT_LOSSES]:
        values = train[column]
        if values.notna().any():
            ax.plot(train["step"], values, label=f"train {column}")
    if not val.empty:
        ax.plot(val["step"], val["total"], "o-", label="held-out (stage objective)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"stage {stage_number}: {stage}")
    ax.grid(alpha=0.3)
    ax.legend()
    path = run_dir / PLOTS_DIR / f"stage{stage_number}_{stage}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def stage_summaries(run_dir: Path, finished: list[dict[str, Any]]) -> list[str]:
    """One line per finished stage: steps, why it stopped, first -> last training loss, best
    held-out loss. `finished`: the records of the finished stages (name, steps, stopped)."""
    log = read_log(run_dir)
    lines = []
    for number, record in enumerate(finished, start=1):
        rows = log[log["stage"] == record["name"]]
        train = rows[rows["split"] == "train"]["total"].dropna()
        val = rows[rows["split"] == "val"]["total"].dropna()
        curve = (
            f"loss {train.iloc[0]:.4f} -> {train.iloc[-1]:.4f}" if len(train) else "no loss logged"
        )
        best = ""
        if len(val):
            best = f", held-out {val.iloc[0]:.4f} at the start, best {val.min():.4f}"
            at_best = rows.loc[val.idxmin()]
            aucs = [
                f"AUC {c[4:]} {at_best[c]:.3f}"
                for c in rows.columns
                if c.startswith("auc_") and pd.notna(at_best[c])
            ]
            best += f" ({', '.join(aucs)})" if aucs else ""
        lines.append(
            f"stage {number} {record['name']}: {record['steps']} steps ({record['stopped']}), "
            f"{curve}{best}"
        )
    return lines


def finite_or_none(value: float) -> float | None:
    """JSON-friendly number: None for inf / nan (e.g. a best loss never measured)."""
    return value if math.isfinite(value) else None


def curriculum_line(
    stages: Sequence[StageConfig], audio_only: bool, store_path: Path, windows: int
) -> str:
    """The run's first line: its stages and store (and why, when the store has no frames)."""
    names = " -> ".join(s.name for s in stages)
    if audio_only:
        return (
            f"store {store_path} has no frames: audio-only curriculum {names} "
            "(curriculum.audio_only_stages)"
        )
    return f"curriculum {names} on {store_path} ({windows} windows)"


def resume_line(
    stages: Sequence[StageConfig], pos: Position, resumed_from: Any, run_dir: Path
) -> str:
    """Where a resumed run goes on from, or that it has nothing left to do."""
    if pos.stage_index < len(stages):
        stage = stages[pos.stage_index].name
        return (
            f"resuming from {resumed_from}: step {pos.step}, stage '{stage}' "
            f"at stage step {pos.stage_step}"
        )
    return f"{run_dir} has finished every stage already (step {pos.step})"


def weights_text(losses: dict[str, float]) -> str:
    """A stage's weighted sum of terms as the log prints it: "0.9 L_av + 0.1 L_aa"."""
    return " + ".join(f"{w:g} L_{n}" for n, w in losses.items())
