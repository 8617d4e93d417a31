"""Triplet training for Table 1 rows a and c: the batches of the loop's triplet loss terms.

Row c, temporal-proximity triplet (Jansen et al. 2018 [11]): anchor and positive are two windows
of one media within Delta_T of each other, the negative a random window of another media. That
is exactly an AA coincidence batch (B pairs from B distinct media) with the second member of
another pair as negative, so term `triplet_time` trains on the loop's ordinary AA batches.

Row a, explicit-label triplet (the topline of [11] and of Table 1): the positive shares a class
label with the anchor, the negative shares none. Its batches come from `LabelTripletSampler`:
the positive of anchor i is a window of another media that shares a label with it, and the
anchors form a cycle in which consecutive anchors share no label, so anchor i + 1 (mod B) is a
valid negative of anchor i. The term `triplet_label` therefore needs no labels itself; the
stage's sampler must be the label sampler (`stage_sampler` picks it for stages with that term).

Both terms use `coincide.losses.TripletLoss` (squared distance of unit-length embeddings,
margin 0.1). The terms are in `coincide.train.terms`; this module samples their batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from coincide.data.pairs import (
    VALIDATION_STREAM,
    PairBatch,
    PairSampler,
    WindowTable,
    usable_media,
    validation_batches,
)
from coincide.errors import UserError
from coincide.store.features import FeatureStore
from coincide.train.objective import StageObjective
from coincide.train.terms import LabelTriplet

# Tries to find the next anchor of the cycle among random candidates before giving up.
CYCLE_DRAWS = 64


# ---------------------------------------------------------------------------------------------
# Which batches a stage trains on


def objective_sampler_kind(objective: StageObjective) -> Literal["coincidence", "label"]:
    """Which batches a stage trains on: "label" when one of its terms needs label triplets."""
    kinds = {getattr(type(term), "sampler", "coincidence") for term in objective.terms.values()}
    if "label" in kinds and len(objective.terms) > 1:
        raise UserError(
            "loss triplet_label needs label-triplet batches and cannot share a stage with "
            f"{', '.join(n for n in objective.terms if n != LabelTriplet.name)}; give it a "
            "stage of its own."
        )
    return "label" if "label" in kinds else "coincidence"


# ---------------------------------------------------------------------------------------------
# Label triplet batches


def media_label_matrix(table: WindowTable, store: FeatureStore) -> tuple[np.ndarray, list[str]]:
    """Multi-hot clip labels of each media code of `table`: `(n_media, C)` bool, class names."""
    names = [list(store.labels.get(str(media_id), [])) for media_id in table.media_ids]
    classes = sorted({c for labels in names for c in labels})
    column = {c: k for k, c in enumerate(classes)}
    matrix = np.zeros((table.n_media, len(classes)), dtype=bool)
    for m, labels in enumerate(names):
        matrix[m, [column[c] for c in labels]] = True
    return matrix, classes


class LabelTripletSampler:
    """Batches for explicit-label triplets (row a), a pure function of (seed, stream, rank,
    batch number) like `PairSampler`, and returned as `PairBatch(anchors, aa=positives)`.

    Rules:
    - anchors are windows of labeled media of `media` (codes) that share a label with at least
      one other such media (so a positive from another media exists);
    - anchor 0 is uniform over those windows; anchor i + 1 is uniform over those whose media
      shares no label with anchor i's media (and the last one none with anchor 0's either), so
      in the cycle of B anchors each next anchor is a negative of the previous one;
    - the positive of an anchor: one of its shareable labels uniformly, then another media with
      that label uniformly, then one of that media's windows uniformly.

    Memory: the media-by-class label matrix, `n_media * C` bytes.
    """

    def __init__(
        self,
        table: WindowTable,
        media_labels: np.ndarray,
        batch_size: int,
        seed: int,
        stream: int,
        media: np.ndarray,
        rank: int = 0,
        what: str = "training",
    ) -> None:
        if batch_size < 2:
            raise UserError("data.batch_size must be at least 2 for triplet batches.")
        self.table = table
        self.batch_size = int(batch_size)
        self.seed, self.stream, self.rank = int(seed), int(stream), int(rank)
        allowed = np.zeros(table.n_media, dtype=bool)
        allowed[np.asarray(media, dtype=np.int64)] = True
        self.labels = media_labels & allowed[:, None]
        # A class gives positives when 2 or more of the allowed media carry it.
        self.shareable = self.labels.sum(axis=0) >= 2
        usable = (self.labels & self.shareable[None, :]).any(axis=1)
        self.eligible = np.flatnonzero(usable[table.media]).astype(np.int64)
        # The media of each class: np.nonzero lists (media, class) in media order, so a stable
        # sort by class keeps each class's media sorted.
        media_of, class_of = np.nonzero(self.labels)
        by_class = np.argsort(class_of, kind="stable")
        counts = np.bincount(class_of, minlength=self.labels.shape[1])
        self.class_media = np.split(media_of[by_class], np.cumsum(counts)[:-1])
        if np.count_nonzero(self.labels[usable].any(axis=0)) < 2:
            # (Two classes that always occur together still leave no negative; the draw of
            # the first batch then says so.)
            raise UserError(
                f"the {what} media do not have two classes to serve as anchor and negative "
                "(explicit-label triplets need labeled media of at least two classes, each on "
                "2 or more media); attach clip labels to the store with `coincide add-labels`."
            )

    def batch(self, number: int) -> PairBatch:
        """Batch `number`: B anchors in a label-disjoint cycle and one positive each."""
        rng = np.random.default_rng([self.seed, self.stream, self.rank, int(number)])
        anchors = np.empty(self.batch_size, dtype=np.int64)
        anchors[0] = self.eligible[rng.integers(len(self.eligible))]
        for i in range(1, self.batch_size):
            avoid = [anchors[i - 1]] + ([anchors[0]] if i == self.batch_size - 1 else [])
            anchors[i] = self._draw_disjoint(rng, avoid)
        positives = np.array([self._draw_positive(rng, a) for a in anchors], dtype=np.int64)
        return PairBatch(
            anchors=self.table.window[anchors], aa=self.table.window[positives], av=None
        )

    def _disjoint(self, position: int, others: Sequence[int]) -> bool:
        row = self.labels[self.table.media[position]]
        return not any((row & self.labels[self.table.media[o]]).any() for o in others)

    def _draw_disjoint(self, rng: np.random.Generator, avoid: Sequence[int]) -> int:
        """A uniform eligible window sharing no label with the windows `avoid`."""
        candidates = self.eligible[rng.integers(len(self.eligible), size=CYCLE_DRAWS)]
        for candidate in candidates:
            if self._disjoint(int(candidate), avoid):
                return int(candidate)
        # Rejection failed (the disjoint windows are rare): draw among all of them exactly.
        media_rows = self.labels[self.table.media[self.eligible]]
        clash = np.zeros(len(self.eligible), dtype=bool)
        for other in avoid:
            clash |= (media_rows & self.labels[self.table.media[other]]).any(axis=1)
        free = self.eligible[~clash]
        if len(free) == 0:
            raise UserError(
                "no labeled window shares no class with the previous anchor, so no negative can "
                "be drawn; lower data.batch_size or use a store with more classes."
            )
        return int(free[rng.integers(len(free))])

    def _draw_positive(self, rng: np.random.Generator, anchor: int) -> int:
        """A window of another media sharing a label with `anchor`."""
        media = self.table.media[anchor]
        classes = np.flatnonzero(self.labels[media] & self.shareable)
        c = int(classes[rng.integers(len(classes))])
        others = self.class_media[c][self.class_media[c] != media]
        other = int(others[rng.integers(len(others))])
        start, end = self.table.media_start[other], self.table.media_end[other]
        return int(start + rng.integers(end - start))


# ---------------------------------------------------------------------------------------------
# What the training loop calls to get a stage's batches


def stage_sampler(
    objective: StageObjective,
    table: WindowTable,
    store: FeatureStore,
    delta_t: float,
    batch_size: int,
    weighting: Literal["windows", "media"],
    seed: int,
    stream: int,
    media: np.ndarray,
    rank: int = 0,
) -> PairSampler | LabelTripletSampler:
    """The batch sampler of a stage: `PairSampler` (coincidence pairs, same arguments) unless
    the stage trains `triplet_label`, which samples label triplets from the store's labels."""
    if objective_sampler_kind(objective) == "label":
        media_labels, _ = media_label_matrix(table, store)
        sampler = LabelTripletSampler(table, media_labels, batch_size, seed, stream, media, rank)
        for term in objective.terms.values():
            if isinstance(term, LabelTriplet):
                term.label_batches = True
        return sampler
    return PairSampler(
        table, objective.kinds, delta_t, batch_size, weighting, seed, stream, media, rank=rank
    )


def stage_batch_size(
    objective: StageObjective,
    table: WindowTable,
    delta_t: float,
    batch_size: int,
    media: np.ndarray,
    world: int,
) -> tuple[int, str | None]:
    """Pairs per step of a stage on this rank, and a note when that is not `batch_size`.

    A coincidence batch holds one pair per media, so on one process a stage whose training
    media are fewer than `batch_size` (but at least 2) trains on batches of all of them instead
    of refusing the store (`PairSampler` says why when even that is impossible). Several
    processes keep `batch_size`: their batches are gathered into one and must be alike.
    """
    if world > 1 or objective_sampler_kind(objective) == "label":
        return batch_size, None
    usable = usable_media(table, objective.kinds, delta_t, media)
    if not 2 <= usable < batch_size:
        return batch_size, None
    return usable, (
        f"only {usable} training media can give this stage a pair, fewer than data.batch_size "
        f"= {batch_size}: its batches hold {usable} pairs (one per media)"
    )


def stage_validation_batches(
    objective: StageObjective,
    table: WindowTable,
    store: FeatureStore,
    media: np.ndarray,
    delta_t: float,
    batch_size: int,
    n_pairs: int,
    seed: int,
) -> list[PairBatch]:
    """The fixed held-out batches of a stage's plateau rule (`validation_batches` for
    coincidence stages; label triplets of the held-out media for `triplet_label`, or none when
    the held-out media cannot form them, in which case the stage runs to its step cap)."""
    if objective_sampler_kind(objective) != "label":
        return validation_batches(table, media, objective.kinds, delta_t, batch_size, n_pairs, seed)
    media_labels, _ = media_label_matrix(table, store)
    try:
        sampler = LabelTripletSampler(
            table, media_labels, batch_size, seed, VALIDATION_STREAM, media, what="validation"
        )
        return [sampler.batch(i) for i in range(-(-n_pairs // batch_size))]
    except UserError:
        # Held-out media too few or too alike for label triplets: no plateau measurement.
        return []
