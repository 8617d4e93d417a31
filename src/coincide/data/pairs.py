"""Coincidence pair sampling (paper 3.1): which windows and frames make a batch.

Definitions (times are the store's `time_s`, one window per second of media):
- An AA pair is two distinct windows of the same media with |t1 - t2| <= delta_t.
- An AV pair is a window and a frame of the same media with |t1 - t2| <= delta_t, except that
  delta_t <= 1 s means the frame of the anchor window itself: the paper's "overlapping frames"
  (Table 1 row i and the L3 recipe), since a 1 Hz frame lies inside exactly one 0.96 s window.
  Times are compared with a 1 ms tolerance (they are float seconds).
- A batch holds B pairs from B distinct media: a second pair from one media would plant false
  negatives among the B(B-1) in-batch negatives. Pairs of several kinds in one batch (a stage
  that trains L_AV and L_AA) share the anchor window: row i is (x1_i, x2_i, v2_i).
- The anchor is drawn uniformly over the eligible windows (those that have a partner of every
  kind the stage needs) with `weighting="windows"`, or uniformly over media then over the media's
  eligible windows with `weighting="media"`; the partner is uniform over the anchor's partners.
  "B distinct media" is enforced by drawing anchors in sequence and skipping any whose media is
  already in the batch (sampling without replacement, proportional to the weighting).

Batches are a pure function of (seed, stream, rank, batch number): the sampler has no state, and
"where the stream is" is one integer (see `SamplerState`), which makes resuming exact whatever
the number of loader workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal, Protocol

import numpy as np
import pandas as pd

from coincide.errors import UserError

PAIR_KINDS = ("aa", "av")
TIME_TOLERANCE_S = 1e-3
# Sampling rounds with rejection of already-taken media before drawing among the others.
REJECTION_ROUNDS = 4
# Stream number of the held-out validation pairs (training streams are stage numbers).
VALIDATION_STREAM = 1 << 20
# Largest delta_t (seconds) the sort key of WindowTable keeps inside one media.
MAX_DELTA_T = 1e4
# Partners of an AV pair are the anchor's own frame when delta_t is at most this (seconds).
OVERLAP_DELTA_T = 1.0


@dataclass(frozen=True)
class PairBatch:
    """Global window positions of one batch; row i of each array belongs to pair i.

    anchors: (B,) the windows x1; aa: (B,) the windows x2 (AA partners) or None;
    av: (B,) the windows whose frames are v2 (AV partners) or None.
    """

    anchors: np.ndarray
    aa: np.ndarray | None
    av: np.ndarray | None


class BatchSampler(Protocol):
    """Anything that maps a batch number to a batch, deterministically (`PairSampler`, the label
    triplet sampler of coincide.train.triplets)."""

    def batch(self, number: int) -> PairBatch: ...


@dataclass
class SamplerState:
    """Where a stream of batches is: batch `next_batch` of stream `stream` under `seed`."""

    seed: int
    stream: int
    next_batch: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class WindowTable:
    """The store index reordered for sampling: windows sorted by (media, time).

    Built once per run from `store.index` (columns media_id, time_s, has_frame).
    Attributes, all over sorted positions p: `window[p]` (global store position), `media[p]`
    (media code 0..n_media-1, codes follow sorted media ids), `time[p]`, `has_frame[p]`;
    `media_start[m]`, `media_end[m]` delimit media m; `media_ids[m]` its id.
    """

    def __init__(self, index: pd.DataFrame) -> None:
        media_ids, media_codes = np.unique(
            index["media_id"].to_numpy(dtype=str), return_inverse=True
        )
        times = index["time_s"].to_numpy(dtype=np.float64)
        order = np.lexsort((times, media_codes))
        self.media_ids: np.ndarray = media_ids
        self.window = order.astype(np.int64)
        self.media = media_codes[order].astype(np.int64)
        self.time = times[order]
        self.has_frame = index["has_frame"].to_numpy(dtype=bool)[order]
        counts = np.bincount(self.media, minlength=len(media_ids))
        self.media_end = np.cumsum(counts).astype(np.int64)
        self.media_start = self.media_end - counts
        # frames_before[p] = frames among sorted positions < p: counts frames in any range.
        self.frames_before = np.concatenate([[0], np.cumsum(self.has_frame)]).astype(np.int64)
        # A key that increases along the sorted order and keeps media apart by more than any
        # delta_t, so one searchsorted finds a window's time range without leaving its media.
        first_time = self.time[self.media_start[self.media]] if len(self.time) else self.time
        span = float((self.time - first_time).max()) if len(self.time) else 0.0
        self._stride = span + 2 * MAX_DELTA_T
        self.key = self.media * self._stride + (self.time - first_time)

    def __len__(self) -> int:
        return len(self.window)

    @property
    def n_media(self) -> int:
        return len(self.media_ids)

    def time_range(self, positions: np.ndarray, delta_t: float) -> tuple[np.ndarray, np.ndarray]:
        """Sorted positions [lo, hi) of the same-media windows within delta_t of each position."""
        if delta_t > MAX_DELTA_T:
            raise UserError(
                f"data.delta_t = {delta_t:g} s is too long; use at most {MAX_DELTA_T:g}."
            )
        reach = delta_t + TIME_TOLERANCE_S
        lo = np.searchsorted(self.key, self.key[positions] - reach, side="left")
        hi = np.searchsorted(self.key, self.key[positions] + reach, side="right")
        return lo.astype(np.int64), hi.astype(np.int64)

    def partner_range(
        self, kind: str, positions: np.ndarray, delta_t: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """[lo, hi) of candidate partners of `kind` for anchors at sorted `positions`.

        For "av" with delta_t <= 1 the range is the anchor itself. Counting partners: "aa" has
        hi - lo - 1 (the anchor is inside and excluded); "av" has the frames in [lo, hi).
        """
        if kind == "av" and delta_t <= OVERLAP_DELTA_T:
            return positions.astype(np.int64), positions.astype(np.int64) + 1
        return self.time_range(positions, delta_t)

    def partner_counts(self, kind: str, positions: np.ndarray, delta_t: float) -> np.ndarray:
        """Number of partners of `kind` of each anchor at sorted `positions`."""
        return self.count_in_range(kind, *self.partner_range(kind, positions, delta_t))

    def count_in_range(self, kind: str, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Number of partners of `kind` in the ranges [lo, hi) of `partner_range`."""
        if kind == "aa":
            return hi - lo - 1
        return self.frames_before[hi] - self.frames_before[lo]


class PairSampler:
    """Draws batches of B coinciding pairs from B distinct media (module docstring: the rules).

    table: the store's `WindowTable`; kinds: partner kinds every pair needs ("aa", "av", or
    none for a stage that only needs anchors); media: the media codes this sampler may use
    (its share of the training media); stream: separates the streams of different stages.
    """

    def __init__(
        self,
        table: WindowTable,
        kinds: Sequence[str],
        delta_t: float,
        batch_size: int,
        weighting: Literal["windows", "media"],
        seed: int,
        stream: int,
        media: np.ndarray,
        rank: int = 0,
        what: str = "training",
    ) -> None:
        unknown = [k for k in kinds if k not in PAIR_KINDS]
        if unknown:
            raise ValueError(f"unknown pair kind {unknown[0]!r}; use one of {PAIR_KINDS}")
        self.table = table
        self.kinds = tuple(sorted(set(kinds)))
        self.delta_t = float(delta_t)
        self.batch_size = int(batch_size)
        self.weighting = weighting
        self.seed = int(seed)
        self.stream = int(stream)
        self.rank = int(rank)
        self.eligible = eligible_anchors(table, self.kinds, self.delta_t, media)
        self.eligible_media = np.unique(table.media[self.eligible])
        if len(self.eligible_media) < self.batch_size:
            needs = " and ".join({"aa": "two windows", "av": "a frame"}[k] for k in self.kinds)
            raise UserError(
                f"only {len(self.eligible_media)} {what} media have {needs or 'a window'} "
                f"within delta_t = {self.delta_t:g} s, fewer than the batch of {self.batch_size} "
                "pairs (one pair per media); lower data.batch_size or add media to the store."
            )
        # For weighting="media": each media's eligible anchors are a contiguous slice of
        # `eligible` (it is sorted by media, then time).
        media_of_eligible = table.media[self.eligible]
        self._media_first = np.searchsorted(media_of_eligible, self.eligible_media, side="left")
        self._media_count = (
            np.searchsorted(media_of_eligible, self.eligible_media, side="right")
            - self._media_first
        )
        # Neighbour batches (`set_neighbours`): row i lists the nearest media of
        # eligible_media[i], as indices into eligible_media.
        self.neighbours: np.ndarray | None = None
        self.neighbour_fraction = 0.0

    def set_neighbours(self, neighbours: np.ndarray | None, fraction: float) -> None:
        """From now on a `fraction` of batches are neighbour batches: one media drawn uniformly
        and B - 1 drawn uniformly from its row of `neighbours` (`(n eligible media, k)`, indices
        into `eligible_media`, nearest first, without the media itself), each media's anchor
        drawn uniformly among its eligible windows. None: every batch as the module docstring.
        """
        if neighbours is not None and neighbours.shape[0] != len(self.eligible_media):
            raise ValueError(
                f"neighbours has {neighbours.shape[0]} rows for {len(self.eligible_media)} media"
            )
        self.neighbours = neighbours
        self.neighbour_fraction = float(fraction)

    def batch(self, number: int) -> PairBatch:
        """Batch `number` of this stream (deterministic: the same number gives the same batch)."""
        rng = np.random.default_rng([self.seed, self.stream, self.rank, int(number)])
        anchors = self._draw_anchors(rng)
        partners = {kind: self._draw_partners(rng, kind, anchors) for kind in PAIR_KINDS}
        return PairBatch(
            anchors=self.table.window[anchors],
            aa=self.table.window[partners["aa"]] if partners["aa"] is not None else None,
            av=self.table.window[partners["av"]] if partners["av"] is not None else None,
        )

    def spread_windows(self, per_media: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to `per_media` evenly spaced eligible windows of each eligible media: (owner,
        window ids), owner[j] the index into `eligible_media` of window j's media."""
        picks = [
            first + np.unique(np.linspace(0, count - 1, per_media).astype(np.int64))
            for first, count in zip(self._media_first, self._media_count, strict=True)
        ]
        owner = np.repeat(np.arange(len(picks)), [len(p) for p in picks])
        return owner, self.table.window[self.eligible[np.concatenate(picks)]]

    def _draw_anchors(self, rng: np.random.Generator) -> np.ndarray:
        """B sorted positions of eligible anchors from B distinct media."""
        neighbours = self.neighbours if self.neighbour_fraction > 0 else None
        if neighbours is not None and rng.random() < self.neighbour_fraction:
            return self._draw_neighbour_anchors(rng, neighbours)
        chosen: list[np.ndarray] = []
        taken = np.zeros(self.table.n_media, dtype=bool)
        need = self.batch_size
        for _ in range(REJECTION_ROUNDS):
            # Oversample, then keep the first draw of each media not yet in the batch.
            candidates = self._candidates(rng, 2 * need + 8)
            media = self.table.media[candidates]
            _, first = np.unique(media, return_index=True)
            first.sort()  # keep draw order, so the result follows the sequential rule
            fresh = first[~taken[media[first]]][:need]
            taken[media[fresh]] = True
            chosen.append(candidates[fresh])
            need -= len(fresh)
            if need == 0:
                return np.concatenate(chosen)
        # Rare media left to find (B close to the number of media): draw the rest among the
        # media not taken, with the same weights renormalised, which is the same sequential rule.
        chosen.append(self._draw_remaining(rng, taken, need))
        return np.concatenate(chosen)

    def _draw_neighbour_anchors(
        self, rng: np.random.Generator, neighbours: np.ndarray
    ) -> np.ndarray:
        first = int(rng.integers(len(self.eligible_media)))
        row = neighbours[first]
        pick = np.concatenate(
            [[first], rng.choice(row, size=min(self.batch_size - 1, len(row)), replace=False)]
        ).astype(np.int64)
        offset = (rng.random(len(pick)) * self._media_count[pick]).astype(np.int64)
        anchors = self.eligible[self._media_first[pick] + offset]
        if len(anchors) < self.batch_size:  # a row shorter than B - 1: the rest at random
            taken = np.zeros(self.table.n_media, dtype=bool)
            taken[self.table.media[anchors]] = True
            rest = self._draw_remaining(rng, taken, self.batch_size - len(anchors))
            anchors = np.concatenate([anchors, rest])
        return np.sort(anchors)

    def _draw_remaining(self, rng: np.random.Generator, taken: np.ndarray, need: int) -> np.ndarray:
        free = np.flatnonzero(~taken[self.eligible_media])
        weights = (
            self._media_count[free].astype(np.float64)
            if self.weighting == "windows"
            else np.ones(len(free))
        )
        pick = rng.choice(free, size=need, replace=False, p=weights / weights.sum())
        offset = (rng.random(need) * self._media_count[pick]).astype(np.int64)
        return self.eligible[self._media_first[pick] + offset]

    def _candidates(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.weighting == "windows":
            return self.eligible[rng.integers(0, len(self.eligible), size=n)]
        pick = rng.integers(0, len(self.eligible_media), size=n)
        offset = (rng.random(n) * self._media_count[pick]).astype(np.int64)
        return self.eligible[self._media_first[pick] + offset]

    def _draw_partners(
        self, rng: np.random.Generator, kind: str, anchors: np.ndarray
    ) -> np.ndarray | None:
        """Sorted positions of one uniformly drawn partner of `kind` per anchor (None if unused)."""
        if kind not in self.kinds:
            return None
        lo, hi = self.table.partner_range(kind, anchors, self.delta_t)
        counts = self.table.count_in_range(kind, lo, hi)
        draw = (rng.random(len(anchors)) * counts).astype(np.int64)
        if kind == "aa":
            # Candidates are [lo, hi) without the anchor: skip over it.
            partner = lo + draw
            return partner + (partner >= anchors)
        # The draw-th frame in [lo, hi): frames_before is a step function over positions.
        target = self.table.frames_before[lo] + draw
        return np.searchsorted(self.table.frames_before, target, side="right") - 1


def eligible_anchors(
    table: WindowTable, kinds: Sequence[str], delta_t: float, media: np.ndarray
) -> np.ndarray:
    """Sorted positions of the windows of `media` (codes) with a partner of every kind."""
    allowed = np.zeros(table.n_media, dtype=bool)
    allowed[np.asarray(media, dtype=np.int64)] = True
    positions = np.flatnonzero(allowed[table.media]).astype(np.int64)
    for kind in kinds:
        positions = positions[table.partner_counts(kind, positions, delta_t) > 0]
    return positions


def usable_media(
    table: WindowTable, kinds: Sequence[str], delta_t: float, media: np.ndarray
) -> int:
    """How many of `media` (codes) have a window with a partner of every kind: the most pairs
    one batch can hold (one pair per media)."""
    return len(np.unique(table.media[eligible_anchors(table, kinds, delta_t, media)]))


def split_media(
    table: WindowTable, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out media for validation: (training media codes, validation media codes).

    A seeded fraction of the media (at least 2, so validation batches have negatives; none when
    the store has fewer than 4 media, which cannot spare them) goes to validation. The choice
    depends only on the seed and the set of media ids, so a resumed run holds out the same media.
    """
    n = table.n_media
    n_val = max(2, int(round(val_fraction * n))) if n >= 4 else 0
    order = np.random.default_rng([seed, 0x5EED]).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def rank_share(media: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """The media codes one rank samples from: every world_size-th media starting at `rank`.

    Disjoint shares keep the global batch (all ranks' pairs together, whose negatives span all of
    it) free of two pairs from one media.
    """
    return np.asarray(media)[rank::world_size]


def validation_batches(
    table: WindowTable,
    media: np.ndarray,
    kinds: Sequence[str],
    delta_t: float,
    batch_size: int,
    n_pairs: int,
    seed: int,
) -> list[PairBatch]:
    """The fixed, seeded held-out pairs of the plateau rule, as whole batches.

    The batch size is `batch_size` or the number of usable held-out media if smaller (one pair
    per media per batch); ceil(n_pairs / batch size) batches. Empty when fewer than 2 media
    are usable (the caller then runs stages to their step caps).
    """
    size = min(batch_size, usable_media(table, kinds, delta_t, media))
    if size < 2:
        return []
    sampler = PairSampler(
        table, kinds, delta_t, size, "windows", seed, VALIDATION_STREAM, media, what="validation"
    )
    return [sampler.batch(i) for i in range(-(-n_pairs // size))]
