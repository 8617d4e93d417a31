"""`coincide train STORE --run RUN`: the curriculum of `coincide.train.loop`, with its settings
resolved and, given a held-out store, a learning curve of f's QbE (`coincide.evaluation.probe`).

One entry point for CPU, one GPU, `--nproc N` and `torchrun --nproc_per_node N coincide train
...`; every process calls `run`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

from coincide.config.settings import Config, load_config
from coincide.errors import UserError
from coincide.evaluation.probe import TrainingProbe
from coincide.run_folder import CONFIG_FILE
from coincide.train import loop


def run(
    store_path: Path,
    run_dir: Path,
    config_sources: Sequence[str],
    overrides: Sequence[str],
    eval_store: Path | None = None,
    eval_every: int = 0,
    init_from: Path | None = None,
) -> None:
    """The `coincide train` command: resolve the configuration, then train (see `train`).

    Without --config, a run folder that already holds a config.yaml resumes with it; a new run
    uses the `laptop` preset (`small` with stages long enough to learn).
    """
    if Path(run_dir).exists() and not Path(run_dir).is_dir():
        raise UserError(f"run folder {run_dir} is a file; give a folder for the run.")
    sources = list(config_sources)
    if not sources:
        saved = Path(run_dir) / CONFIG_FILE
        sources = [str(saved)] if saved.is_file() else ["laptop"]
    cfg = load_config(sources, overrides)
    train(
        cfg, store_path, run_dir, eval_store=eval_store, eval_every=eval_every, init_from=init_from
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
