"""`coincide train STORE --run RUN`: the curriculum of `coincide.train.loop`, with its settings
resolved and, given a held-out store, a learning curve of f's QbE (`coincide.evaluation.probe`).

One entry point for CPU, one GPU, `--nproc N` and `torchrun --nproc_per_node N coincide train
...`; every process calls `run`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from coincide.config.settings import Config, load_config
from coincide.config.stage import StageSettings
from coincide.errors import UserError
from coincide.evaluation.probe import TrainingProbe
from coincide.run_folder import CONFIG_FILE
from coincide.train import loop


@dataclass(frozen=True)
class TrainSettings(StageSettings):
    """`coincide train`: the store, the run folder, where the configuration comes from (preset
    names or YAML files, then `--set` overrides), a labeled held-out store for the learning
    curve (measured every `eval_every` steps) and the weights f starts from (`init_from`).

    The configuration they resolve to is the run's config.yaml; these options are its
    settings.json.
    """

    command: ClassVar[str] = "train"
    store: Path
    run: Path
    config_sources: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    eval_store: Path | None = None
    eval_every: int = 0
    init_from: Path | None = None


def run(settings: TrainSettings) -> None:
    """The `coincide train` command: resolve the configuration, then train (see `train`).

    Without --config, a run folder that already holds a config.yaml resumes with it; a new run
    uses the `laptop` preset (`small` with stages long enough to learn).
    """
    run_dir = Path(settings.run)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} is a file; give a folder for the run.")
    sources = list(settings.config_sources)
    if not sources:
        saved = run_dir / CONFIG_FILE
        sources = [str(saved)] if saved.is_file() else ["laptop"]
    cfg = load_config(sources, settings.overrides)
    if os.environ.get("RANK", "0") == "0":  # one process of a group writes (torchrun sets RANK)
        run_dir.mkdir(parents=True, exist_ok=True)
        settings.write(run_dir)
    train(
        cfg,
        settings.store,
        run_dir,
        eval_store=settings.eval_store,
        eval_every=settings.eval_every,
        init_from=settings.init_from,
    )


def train(
    cfg: Config,
    store_path: Path,
    run_dir: Path,
    *,
    eval_store: Path | None = None,
    eval_every: int = 0,
    init_from: Path | None = None,
) -> None:
    """`coincide.train.loop.train` with, given `eval_store` (a labeled held-out store) and
    `eval_every` > 0, QbE mAP of the audio encoder measured on it at step 0 and every
    `eval_every` steps into RUN/eval_curve.csv and TensorBoard (`eval/qbe_map`)."""
    probe = functools.partial(TrainingProbe, eval_store) if eval_store is not None else None
    loop.train(cfg, store_path, run_dir, probe=probe, eval_every=eval_every, init_from=init_from)
