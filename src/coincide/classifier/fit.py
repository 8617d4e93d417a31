"""How long to train p_class (and f): a held-out split of the labeled windows picks the number
of steps, then the classifier is trained again on every label for that many steps.

`coincide finetune` and `coincide reproduce table3` fine-tune f with L_class (paper 3.4) on a
few labeled windows. A fixed step count is either too short for thousands of propagated labels
or far too long for five random ones (it overfits them and costs minutes). Instead:

1. Split the labeled windows into training and validation (`group_split`), holding out whole
   groups: media files (windows of one file stay on one side, so validation measures other
   recordings), or, for propagated labels, the answered clusters they came from. A window whose
   cluster stays in training carries that cluster's answer, which a classifier on the frozen f
   already predicts (the clusters are regions of f): validation on it would never ask for f to
   be fine-tuned. A held-out cluster asks whether what was learned from the other clusters
   carries over to windows no answer reached, as the test store does. Groups are held out only
   when each of their classes stays in training; the validation share is never the test store.
2. With a pretrained f, first fit p_class alone on the frozen embeddings f(x) (`fit_head`, full
   batch: milliseconds), so that fine-tuning starts from a classifier that already works
   ("warm start"); its step count is picked on the validation windows the same way (never
   0: a random p_class is no candidate).
3. Fine-tune f and p_class on the training split, measuring the validation loss every
   `eval_every` steps (`StepSelector`); stop after `patience` measurements without a better
   one. With a pretrained f the best step may be 0: fine-tuning f did not help the frozen-f
   classifier (fresh weights are no candidate).
4. Train again from the same start on every labeled window for the chosen numbers of steps,
   so that no label is lost to validation (a random budget of 5 keeps all 5).

Labels may be partial (search answers: "this window is a dog", "this one is not"):
`LabelTargets` carries, besides the positive labels, the classes known to be absent and which
windows are closed-world (every class not named is absent: cluster and random labels).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import label_ranking_average_precision_score
from torch import nn

from coincide.evaluation.metrics import labels_to_matrix
from coincide.losses import ClassificationLoss

if TYPE_CHECKING:
    from coincide.classifier.train import FinetuneConfig

# ---------------------------------------------------------------------------------------------
# Targets


def is_multilabel(labels: list[list[str]], setting: bool | None) -> bool:
    """The classifier kind: the setting when given, else multi-label iff some window has
    several labels."""
    if setting is not None:
        return setting
    return any(len(set(names)) > 1 for names in labels)


def target_matrix(labels: list[list[str]], classes: list[str], multilabel: bool) -> np.ndarray:
    """`(m, C)` float32 targets: multi-hot rows (multi-label) or rows that sum to 1 spread
    evenly over the window's labels (single-label)."""
    matrix, _ = labels_to_matrix(labels, classes)
    targets = matrix.astype(np.float32)
    if not multilabel:
        targets /= np.maximum(targets.sum(axis=1, keepdims=True), 1.0)
    return targets


@dataclass(frozen=True)
class LabelTargets:
    """Training targets of m labeled windows over C classes.

    positive: `(m, C)` float32: multi-hot rows (multi-label) or rows spread evenly over the
        window's labels (single-label); all zero for a window with only negatives.
    negative: `(m, C)` bool, classes known to be absent beyond those closed-world rows imply
        (None when no window has any).
    closed: `(m,)` bool, windows whose unnamed classes are all absent (None: every window).
    """

    positive: torch.Tensor
    negative: torch.Tensor | None
    closed: torch.Tensor | None
    multilabel: bool

    @classmethod
    def build(
        cls,
        labels: Sequence[Sequence[str]],
        classes: list[str],
        multilabel: bool,
        negatives: Sequence[Sequence[str]] | None = None,
        closed: np.ndarray | None = None,
    ) -> LabelTargets:
        positive = target_matrix([list(x) for x in labels], classes, multilabel)
        negative = None
        if negatives is not None and any(len(x) for x in negatives):
            known = [[c for c in names if c in classes] for names in negatives]
            negative = torch.from_numpy(labels_to_matrix(known, classes)[0].astype(bool))
        open_rows = None if closed is None or bool(np.all(closed)) else torch.from_numpy(closed)
        return cls(torch.from_numpy(positive), negative, open_rows, multilabel)

    def rows(self, picks: torch.Tensor | np.ndarray) -> LabelTargets:
        """The targets of some windows (positions into the m rows)."""
        picks = torch.as_tensor(picks, dtype=torch.long)
        return LabelTargets(
            self.positive[picks],
            None if self.negative is None else self.negative[picks],
            None if self.closed is None else self.closed[picks],
            self.multilabel,
        )

    def to(self, device: torch.device) -> LabelTargets:
        return LabelTargets(
            self.positive.to(device),
            None if self.negative is None else self.negative.to(device),
            None if self.closed is None else self.closed.to(device),
            self.multilabel,
        )


def classifier_loss(logits: torch.Tensor, targets: LabelTargets) -> torch.Tensor:
    """L_class (equation 3) on `(B, C)` logits, extended to partial labels.

    With closed-world labels only, this is `ClassificationLoss` exactly. Otherwise:
    multi-label: the Bernoulli cross-entropy over the classes whose state is known (named
    positive, named negative, or every class of a closed row); single-label: the cross-entropy
    for rows with a positive label, and -sum_c log(1 - p_c) over the absent classes c of a row
    that has none.
    """
    logits = logits.float()
    if targets.negative is None and targets.closed is None:
        return ClassificationLoss(targets.multilabel)(logits, targets.positive)
    positive = targets.positive.to(logits.dtype)
    negative = (
        torch.zeros_like(positive, dtype=torch.bool)
        if targets.negative is None
        else targets.negative
    )
    closed = (
        torch.ones(len(positive), dtype=torch.bool, device=logits.device)
        if targets.closed is None
        else targets.closed
    )
    if targets.multilabel:
        known = closed[:, None] | (positive > 0) | negative
        per_class = F.binary_cross_entropy_with_logits(logits, positive, reduction="none")
        return (per_class * known).sum(-1).mean()
    has_positive = positive.sum(-1) > 0
    log_probs = F.log_softmax(logits, dim=-1)
    cross_entropy = -(positive * log_probs).sum(-1)
    # log(1 - p) from log p, kept finite when p rounds to 1.
    log_absent = torch.log(-torch.expm1(log_probs.clamp(max=-1e-6)))
    absent = -(log_absent * negative).sum(-1)
    return torch.where(has_positive, cross_entropy, absent).mean()


# ---------------------------------------------------------------------------------------------
# The validation split


def group_split(
    groups: Sequence[Hashable] | np.ndarray,
    fraction: float,
    seed: int,
    labels: Sequence[Sequence[Hashable]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the labeled windows for training and for validation, holding out whole
    groups (media files, or answered clusters).

    Args:
        groups: `(m,)` the group of each labeled window.
        fraction: share of the groups held out (rounded, at least one when there are two or
            more; none when all windows are in one group).
        seed: the seeded order in which groups are considered.
        labels: the windows' labels: a group is held out only if each of its labels stays in
            some training group, so validation never measures a class that training cannot
            learn (and a class labeled once is never held out).

    Returns:
        `(train, validation)` int64 positions, ascending; validation is empty when nothing can
        be held out.
    """
    ids = np.asarray(groups).astype(str)
    files = np.unique(ids)
    wanted = 0 if len(files) < 2 else min(len(files) - 1, max(1, round(fraction * len(files))))
    file_labels: dict[str, set[Hashable]] = {name: set() for name in files}
    for name, names in zip(ids, labels if labels is not None else [()] * len(ids), strict=True):
        file_labels[name].update(names)
    files_with = {c: 0 for names in file_labels.values() for c in names}
    for names in file_labels.values():
        for c in names:
            files_with[c] += 1
    chosen: list[str] = []
    for name in files[np.random.default_rng(seed).permutation(len(files))]:
        if len(chosen) == wanted:
            break
        if all(files_with[c] >= 2 for c in file_labels[name]):
            chosen.append(str(name))
            for c in file_labels[name]:
                files_with[c] -= 1
    in_validation = np.isin(ids, chosen)
    return np.flatnonzero(~in_validation), np.flatnonzero(in_validation)


# ---------------------------------------------------------------------------------------------
# Picking the number of steps


class StepSelector:
    """Early stopping on validation measurements taken every few steps.

    A measurement is better when its ranking score (`validation_measure`: the test metric
    ranks too) is higher, or, at an equal score, when its loss is lower by a relative `min_delta`:
    a loss alone keeps rising while a classifier grows confident on a few labels although it
    still ranks better. Remembers the best step (and, when asked, the model's weights there);
    `stop` after `patience` measurements that were not better.
    """

    def __init__(self, patience: int, min_delta: float = 1e-3, score_tolerance: float = 1e-4):
        self.patience = patience
        self.min_delta = min_delta
        self.score_tolerance = score_tolerance
        self.best_score = -float("inf")
        self.best_loss = float("inf")
        self.best_step = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.measured = 0
        self.bad = 0

    def _better(self, score: float, loss: float) -> bool:
        if self.measured == 0:
            return True
        if score > self.best_score + self.score_tolerance:
            return True
        tied = not score < self.best_score - self.score_tolerance  # NaN scores tie
        return tied and loss < self.best_loss - self.min_delta * abs(self.best_loss)

    def measure(
        self, step: int, loss: float, score: float = float("nan"), model: nn.Module | None = None
    ) -> None:
        """Record the validation `loss` and ranking `score` (NaN: none) at `step`."""
        if self._better(score, loss):
            self.best_score, self.best_loss, self.best_step, self.bad = score, loss, step, 0
            if model is not None:
                self.best_state = copy.deepcopy(model.state_dict())
        else:
            self.bad += 1
        self.measured += 1

    @property
    def stop(self) -> bool:
        return self.bad >= self.patience


def validation_measure(logits: torch.Tensor, targets: LabelTargets) -> tuple[float, float]:
    """`(loss, score)` of validation logits `(n, C)`: L_class, and the label ranking average
    precision (scikit-learn's LRAP: for each window, how high its labels rank among the classes)
    over the windows with a positive label; NaN when none has. A per-window ranking score stays
    informative with a single validation window, where a per-class AP is 1 whatever the scores.
    """
    loss = float(classifier_loss(logits, targets))
    truth = (targets.positive > 0).cpu().numpy()
    rows = truth.any(axis=1)
    if not rows.any() or truth.shape[1] < 2:
        return loss, float("nan")
    probs = torch.sigmoid(logits) if targets.multilabel else torch.softmax(logits, dim=-1)
    scores = probs.float().cpu().numpy()
    return loss, float(label_ranking_average_precision_score(truth[rows], scores[rows]))


def fit_head(
    head: nn.Module,
    embeddings: torch.Tensor,
    targets: LabelTargets,
    steps: int,
    lr: float,
    weight_decay: float,
    validation: tuple[torch.Tensor, LabelTargets] | None = None,
    patience: int = 10,
    eval_every: int = 10,
) -> int:
    """Train p_class alone on frozen embeddings, full batch (AdamW), in place.

    Args:
        embeddings: `(m, d)` f(x) of the training windows; targets: theirs.
        steps: at most this many steps (exactly this many without `validation`).
        validation: `(embeddings, targets)` of held-out windows, measured every `eval_every`
            steps: training stops after `patience` measurements without a better one
            (`StepSelector`), and the head is put back to its best step.

    Returns:
        The number of steps the head was trained (the best step with validation).
    """
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    selector = StepSelector(patience)
    head.train()
    for step in range(steps + 1):
        # Step 0 is a random head: never the one to keep.
        if validation is not None and step > 0 and (step % eval_every == 0 or step == steps):
            with torch.no_grad():
                loss, score = validation_measure(head(validation[0]), validation[1])
            selector.measure(step, loss, score, head)
            if selector.stop:
                break
        if step == steps:
            break
        loss_value = classifier_loss(head(embeddings), targets)
        optimizer.zero_grad(set_to_none=True)
        loss_value.backward()
        optimizer.step()
    head.eval()
    if validation is None:
        return steps
    assert selector.best_state is not None
    head.load_state_dict(selector.best_state)
    return selector.best_step


def batch_positions(count: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """`(b,)` positions into a training set of `count` windows for one step, seeded by
    (seed, step): every window (shuffled) when the set fits one batch, else `batch_size` drawn
    with replacement. A resumed run draws the same batches."""
    rng = np.random.default_rng([seed, step])
    if count <= batch_size:
        return rng.permutation(count)
    return rng.integers(count, size=batch_size)


def freeze_batchnorm(model: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode: it normalises with the pretrained running
    statistics (its affine weights still train). Fine-tuning a pretrained f on a few windows
    must not replace statistics learned on the whole store by those of a batch of five, and
    the warm-started p_class was fitted on embeddings computed with them."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def select_steps(
    train_step: Callable[[int], float],
    measure: Callable[[], tuple[float, float]],
    max_steps: int,
    eval_every: int,
    patience: int,
    from_start: bool = True,
) -> int:
    """Run `train_step(step)` until the validation `(loss, score)` from `measure` (taken every
    `eval_every` steps, and at step 0 when `from_start`: the starting weights are a candidate,
    e.g. a warm-started classifier, not random ones) stops getting better (`StepSelector`), or
    up to `max_steps`; returns the best step. The caller then trains again from the start on
    all labels."""
    selector = StepSelector(patience)
    step = 0
    while True:
        if (step > 0 or from_start) and (step % eval_every == 0 or step == max_steps):
            selector.measure(step, *measure())
            if selector.stop:
                break
        if step == max_steps:
            break
        train_step(step)
        step += 1
    return selector.best_step


def choose_steps(
    model: nn.Module,
    groups: np.ndarray | None,
    targets: LabelTargets,
    frozen: torch.Tensor | None,
    cfg: FinetuneConfig,
    train_mode: Callable[[], None],
    step_loss: Callable[[torch.optim.Optimizer, np.ndarray, int], float],
    batch: Callable[[np.ndarray], tuple[torch.Tensor, np.ndarray]],
) -> dict[str, Any]:
    """The steps of p_class alone (`head_steps`, pretrained f only) and of f with p_class
    (`steps`), picked on a held-out share of the groups, and the validation windows measured;
    the fixed counts when early stopping is off or nothing can be held out.

    Args:
        model: p_class on f, at its start (left wherever selection stopped).
        groups: `(m,)` what validation holds out whole for each labeled window: its media
            file, or the answered cluster its label came from (None without early stopping);
            targets: their targets.
        frozen: `(m, d)` embeddings under the starting f, for the warm start (pretrained f).
        train_mode: puts the model in its training mode; step_loss(optimizer, positions,
            step): one optimizer step on those labeled positions; batch(positions): their
            inputs and the positions in the inputs' order.
    """
    fixed = {"head_steps": cfg.head_steps if frozen is not None else 0, "steps": cfg.steps}
    if not cfg.early_stop or groups is None:
        return {**fixed, "validation_windows": 0}
    classes_of = [tuple(np.flatnonzero(row)) for row in targets.positive.cpu().numpy() > 0]
    train_pos, val_pos = group_split(groups, cfg.val_fraction, cfg.seed, classes_of)
    if len(val_pos) == 0:
        return {**fixed, "validation_windows": 0}
    if len(val_pos) > cfg.val_windows:
        val_pos = np.sort(
            np.random.default_rng(cfg.seed).choice(val_pos, cfg.val_windows, replace=False)
        )
    head_steps = 0
    if frozen is not None:
        head_steps = fit_head(
            model.head,
            frozen[train_pos],
            targets.rows(train_pos),
            cfg.head_steps,
            cfg.head_lr,
            cfg.weight_decay,
            validation=(frozen[val_pos], targets.rows(val_pos)),
        )
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def train_step(step: int) -> float:
        picks = train_pos[batch_positions(len(train_pos), cfg.batch_size, cfg.seed, step)]
        return step_loss(optimizer, picks, step)

    def validation() -> tuple[float, float]:
        model.eval()
        logits, order = [], []
        with torch.no_grad():
            for start in range(0, len(val_pos), cfg.eval_batch_size):
                logmel, rows = batch(val_pos[start : start + cfg.eval_batch_size])
                logits.append(model(logmel).float())
                order.append(rows)
        train_mode()
        return validation_measure(torch.cat(logits), targets.rows(np.concatenate(order)))

    train_mode()
    # Fresh weights at step 0 are no candidate; a pretrained f with its fitted p_class is.
    steps = select_steps(
        train_step, validation, cfg.steps, cfg.eval_every, cfg.patience, frozen is not None
    )
    return {
        "head_steps": head_steps,
        "steps": steps,
        "validation_windows": int(len(val_pos)),
    }
