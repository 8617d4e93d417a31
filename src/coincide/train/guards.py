"""What stops training on non-finite numbers, with a sentence that says where and what to do:
a store holding NaN or inf features is refused before the first step; a loss that becomes
non-finite names the stage, the step and the checkpoint that is kept."""

from __future__ import annotations

from pathlib import Path

import torch

from coincide import dist
from coincide.errors import UserError
from coincide.store.features import FeatureStore


def check_store_finite(store: FeatureStore) -> None:
    """Refuse a store with NaN or inf in its features, naming the store and the media: one such
    window turns every loss non-finite, and the failure would look like a learning-rate one."""
    bad = store.non_finite_media()
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise UserError(
            f"store {store.root} holds non-finite features (NaN or inf) from {len(bad)} media "
            f"({shown}); ingest into a new store, which skips such files."
        )


def non_finite_step(bad_step: torch.Tensor, current: int) -> int | None:
    """The step to name when any rank saw a non-finite loss since the stage started
    (`bad_step` >= 0 on a rank that did; its own step, else `current`), or None."""
    if float(dist.all_reduce_mean((bad_step >= 0).float())) <= 0:
        return None
    return int(bad_step) if int(bad_step) >= 0 else current


def non_finite_error(what: str, stage: str, step: int, last_path: Path, lr: float) -> UserError:
    """The error that stops a run whose `what` (loss, held-out loss) became non-finite."""
    from coincide.train.checkpoint import load_checkpoint

    kept, again = "no checkpoint had been written yet", "run again"
    if last_path.exists():
        saved = load_checkpoint(last_path)
        kept = f"the last good checkpoint {last_path} (step {saved['step']}) is kept"
        again = "run again to resume from it"
    return UserError(
        f"the {what} became non-finite in stage '{stage}' at step {step}; {kept}: "
        f"lower optim.lr (now {lr:g}) or set optim.grad_clip and {again}."
    )
