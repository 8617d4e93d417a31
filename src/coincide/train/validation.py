"""Held-out measurements of a stage: what the plateau rule, best.pt and the overfitting warning
read.

Every evaluation scores the fixed, seeded held-out pairs of the stage (media never used for
gradients, `coincide.data.pairs.validation_batches`) and returns, for each loss term, its
held-out loss and, for the coincidence terms, the ROC AUC of coinciding pairs against the
in-batch non-coinciding ones (the same B(B-1) negatives as equations 1-2). The stage's
criterion is the held-out value of the stage objective itself (the weighted sum of its terms,
L_clust included where the stage trains it: the cluster head is part of what a checkpoint
holds, so a checkpoint chosen without it could carry an untrained head).

`Overfitting` watches the criterion's coincidence part against the training loss: held-out loss
rising for several evaluations in a row while the training loss falls is memorization.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from coincide import dist
from coincide.data.batches import read_batch
from coincide.data.pairs import PairBatch
from coincide.store.features import FeatureStore
from coincide.train.objective import StageObjective

# Evaluations in a row with rising held-out loss and falling training loss before a warning.
OVERFIT_EVALUATIONS = 3


@dataclass
class HeldOut:
    """One held-out evaluation of a stage.

    criterion: the held-out stage objective (plateau rule and best.pt); coincidence: its
    coincidence terms alone (weighted, as `StageObjective.monitored_loss`); losses: each term's
    held-out loss; auc: ROC AUC of each coincidence term (positive pairs against in-batch
    negatives), pooled over all held-out batches.
    """

    criterion: float
    coincidence: float
    losses: dict[str, float]
    auc: dict[str, float] = field(default_factory=dict)

    @property
    def finite(self) -> bool:
        return math.isfinite(self.criterion)


@torch.no_grad()
def evaluate_held_out(
    objective: StageObjective,
    batches: list[PairBatch],
    store: FeatureStore,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> HeldOut:
    """Score the fixed held-out pairs; every rank evaluates the same pairs, results averaged."""
    objective.eval()
    sums: dict[str, list[torch.Tensor]] = {}
    coincidence, criterion = [], []
    scores: dict[str, list[np.ndarray]] = {}
    truth: dict[str, list[np.ndarray]] = {}
    for pairs in batches:
        batch = {k: v.to(device) for k, v in read_batch(store, pairs).items()}
        with autocast():
            losses = objective(batch, collective=False)
        for name in objective.weights:
            sums.setdefault(name, []).append(losses[name].float())
            logits = objective.terms[name].stats.pop("pair_logits", None)
            if logits is not None:
                matrix = logits.float().cpu().numpy()
                scores.setdefault(name, []).append(matrix.ravel())
                truth.setdefault(name, []).append(np.eye(*matrix.shape, dtype=bool).ravel())
        coincidence.append(objective.monitored_loss(losses))
        criterion.append(losses["total"].float())
    objective.train()
    names = list(sums)
    stacked = torch.stack(
        [torch.stack(criterion).mean(), torch.stack(coincidence).mean()]
        + [torch.stack(sums[n]).mean() for n in names]
    )
    values = dist.all_reduce_mean(stacked).tolist()
    auc = {
        name: float(roc_auc_score(np.concatenate(truth[name]), np.concatenate(scores[name])))
        for name in scores
    }
    return HeldOut(values[0], values[1], dict(zip(names, values[2:], strict=True)), auc)


class Overfitting:
    """Says when held-out coincidence loss has risen while training loss fell, `evaluations`
    times in a row (the evidence of memorizing the training media), once per stage."""

    def __init__(self, evaluations: int = OVERFIT_EVALUATIONS) -> None:
        self.evaluations = evaluations
        self.history: list[tuple[int, float, float]] = []  # (stage step, train, held-out)
        self.reported: dict[str, float] | None = None

    def update(
        self, stage_step: int, train_loss: float, held_out: float
    ) -> dict[str, float] | None:
        """Record one evaluation; returns the evidence (once) when the pattern first holds."""
        self.history.append((stage_step, train_loss, held_out))
        recent = self.history[-(self.evaluations + 1) :]
        if self.reported is not None or len(recent) <= self.evaluations:
            return None
        rising = all(b[2] > a[2] for a, b in zip(recent, recent[1:], strict=False))
        falling = all(b[1] < a[1] for a, b in zip(recent, recent[1:], strict=False))
        if not (rising and falling):
            return None
        first, last = recent[0], recent[-1]
        self.reported = {
            "from_step": first[0],
            "to_step": last[0],
            "train_from": round(first[1], 4),
            "train_to": round(last[1], 4),
            "held_out_from": round(first[2], 4),
            "held_out_to": round(last[2], 4),
            "best_held_out": round(min(h[2] for h in self.history), 4),
        }
        return self.reported


def overfitting_message(stage: str, evidence: dict[str, float]) -> str:
    """The warning `coincide train` prints (and the report repeats)."""
    return (
        f"stage '{stage}' is memorizing its training media: from stage step "
        f"{evidence['from_step']:.0f} to {evidence['to_step']:.0f} the held-out coincidence loss "
        f"rose {evidence['held_out_from']:.3f} -> {evidence['held_out_to']:.3f} while the "
        f"training loss fell {evidence['train_from']:.3f} -> {evidence['train_to']:.3f}. "
        "best.pt keeps the best held-out weights; to generalize, add media, turn on "
        "augmentation (augment.*), use a smaller model, or train fewer steps."
    )
