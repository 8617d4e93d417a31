"""A representation measured the paper's way (section 4.1, Table 1), on the windows of stores.

The unit of evaluation is the 0.96 s window ("segment retrieval" in Table 1); a window carries
the clip-level labels of its media, and windows of unlabeled media are left out.

- QbE retrieval mAP (`coincide.evaluation.qbe.qbe_map`) over the labeled windows of the test
  store, with the metric's seeded per-class sample (100 positives + 100 negatives per class) and
  sampling seed `QBE_SEED` for every run, so all rows of a table are scored on the same pairs.
  Three figures: `qbe_map` leaves out every pair of two windows of the same media (they share
  the clip's labels and its recording, so they reward knowing the clip, not the class: one
  random vector per clip scores above chance when they count); `qbe_map_same_media` counts
  them (the earlier definition, kept beside it for comparison); `clip_qbe_map` ranks one mean
  embedding per media (`coincide.evaluation.qbe.clip_qbe_map`). A metrics.json without
  `qbe_map_same_media` was written before the change, and its `qbe_map` counted same-media
  pairs (`qbe_excludes_same_media`).
- Shallow classifier mAP (`coincide.evaluation.metrics.shallow_classifier_map`): one 512-unit
  hidden layer trained on the frozen representation of the training store's labeled windows
  and scored on the test store's. Without a training store, the labeled test media are split in
  two halves by a seeded draw over media (`SPLIT_SEED`; all windows of a clip fall on one side):
  the classifier trains on one half and is scored on the other.
  The training windows are capped at `max_train_windows` (a seeded subset, the same for every
  representation) to bound the cost of the 6144-d log-mel baseline on CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from coincide.errors import UserError
from coincide.evaluation.metrics import shallow_classifier_map
from coincide.evaluation.qbe import (
    clip_qbe_average_precision_per_class,
    qbe_average_precision_per_class,
)
from coincide.evaluation.representations import Representation
from coincide.store.features import FeatureStore

QBE_SEED = 0
SPLIT_SEED = 0
DEFAULT_MAX_TRAIN_WINDOWS = 20000


@dataclass(frozen=True)
class LabeledWindows:
    """The labeled windows of a store: global `positions` (n,), their `labels` (n lists of
    class names) and `media` ids (n,)."""

    positions: np.ndarray
    labels: list[list[str]]
    media: np.ndarray

    def __len__(self) -> int:
        return len(self.positions)

    def subset(self, keep: np.ndarray) -> LabeledWindows:
        """The windows at indices `keep` (into this set), in that order."""
        return LabeledWindows(
            self.positions[keep], [self.labels[i] for i in keep], self.media[keep]
        )


def labeled_windows(store: FeatureStore) -> LabeledWindows:
    """Every window of `store` whose media has at least one label, in global order."""
    index = store.index
    labels = index["labels"].tolist()
    keep = np.flatnonzero([len(names) > 0 for names in labels]).astype(np.int64)
    return LabeledWindows(
        keep, [list(labels[i]) for i in keep], index["media_id"].to_numpy(dtype=str)[keep]
    )


def split_by_media(
    windows: LabeledWindows, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into `windows`) of a seeded half/half split over media: (train, test).

    The draw depends only on the seed and the sorted media ids. Needs at least 2 media.
    """
    media = np.unique(windows.media)
    if len(media) < 2:
        raise UserError(
            "the test store has labeled windows from fewer than 2 media, so it cannot be split "
            "for the shallow classifier; pass --store with a labeled training store."
        )
    order = np.random.default_rng([seed, 0xC1A55]).permutation(len(media))
    train_media = media[np.sort(order[: len(media) // 2])]
    is_train = np.isin(windows.media, train_media)
    return np.flatnonzero(is_train), np.flatnonzero(~is_train)


def cap_windows(n: int, limit: int | None, seed: int = SPLIT_SEED) -> np.ndarray:
    """Sorted indices of a seeded subset of `min(n, limit)` of `n` windows (all when no limit)."""
    if limit is None or n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 0xCA9]).choice(n, size=limit, replace=False))


def evaluate_representation(
    representation: Representation,
    test_store: FeatureStore,
    train_store: FeatureStore | None = None,
    *,
    shallow_seed: int = 0,
    max_train_windows: int | None = DEFAULT_MAX_TRAIN_WINDOWS,
    shallow: bool = True,
) -> dict[str, Any]:
    """QbE mAP and shallow-classifier mAP of one representation (module docstring: protocol).

    Args:
        representation: maps windows to vectors `(n, d)`.
        test_store: labeled store to retrieve in and to score the classifier on.
        train_store: labeled store to train the classifier on; None splits the test store.
        shallow_seed: the classifier's initialisation / batching seed.
        max_train_windows: cap on the classifier's training windows (None: all).
        shallow: also train and score the shallow classifier.

    Returns:
        A JSON-ready dict: `qbe_map` (same-media pairs left out) and its `qbe_per_class`,
        `qbe_map_same_media` (counted), `clip_qbe_map` (None when no class has 2 clips and a
        clip without it), `shallow_map` (or None) and the sizes.
    """
    test = labeled_windows(test_store)
    if len(test) == 0:
        raise UserError(
            f"the test store {test_store.root} has no labeled windows; attach clip labels with "
            "`coincide add-labels --store STORE --labels LABELS.csv` first."
        )
    started = time.monotonic()
    test_vectors = representation.embed(test_store, test.positions)
    per_class = window_qbe_per_class(
        test_vectors, test.labels, test.media, f"the test store {test_store.root}"
    )
    same_media = qbe_average_precision_per_class(
        test_vectors, test.labels, media=test.media, same_media_pairs=True, seed=QBE_SEED
    )
    clip = clip_qbe_average_precision_per_class(
        test_vectors, test.labels, test.media, seed=QBE_SEED
    )
    result: dict[str, Any] = {
        "representation": representation.name,
        "embed_dim": int(test_vectors.shape[1]),
        "test_store": str(test_store.root),
        "test_windows": len(test),
        "test_clips": len(np.unique(test.media)),
        "qbe_map": _mean_or_none(per_class),
        "qbe_classes": len(per_class),
        "qbe_per_class": per_class,
        "qbe_map_same_media": _mean_or_none(same_media),
        "qbe_classes_same_media": len(same_media),
        "clip_qbe_map": _mean_or_none(clip),
        "clip_qbe_classes": len(clip),
        "qbe_seed": QBE_SEED,
        "shallow_map": None,
    }
    if shallow:
        result.update(
            _shallow(
                representation, test, test_vectors, train_store, shallow_seed, max_train_windows
            )
        )
    result["seconds"] = round(time.monotonic() - started, 2)
    return result


def window_qbe_per_class(
    vectors: np.ndarray, labels: list[list[str]], media: np.ndarray, where: str
) -> dict[str, float]:
    """QbE average precision of each class of labeled windows, same-media pairs left out, at
    the evaluation seed; UserError when no class of `where` (the store, as the user named it)
    can be scored."""
    per_class = qbe_average_precision_per_class(vectors, labels, media=media, seed=QBE_SEED)
    if not per_class:
        raise UserError(
            f"no class of {where} has labeled windows from 2 media and a window without it, so "
            "QbE cannot be scored; evaluate on a store with several clips per class."
        )
    return per_class


def _mean_or_none(per_class: dict[str, float]) -> float | None:
    """The mAP of a per-class mapping, None when no class was scored."""
    return float(np.mean(list(per_class.values()))) if per_class else None


def qbe_excludes_same_media(metrics: dict[str, Any]) -> bool:
    """Whether a metrics dict (RUN/eval/metrics.json) was measured with same-media pairs left
    out of `qbe_map`; one written before that change has no `qbe_map_same_media`, and its
    `qbe_map` counted them."""
    return "qbe_map_same_media" in metrics


def _shallow(
    representation: Representation,
    test: LabeledWindows,
    test_vectors: np.ndarray,
    train_store: FeatureStore | None,
    seed: int,
    max_train_windows: int | None,
) -> dict[str, Any]:
    """Train and score the shallow classifier; the split it used goes into the result."""
    if train_store is None:
        train_idx, test_idx = split_by_media(test)
        train_idx = train_idx[cap_windows(len(train_idx), max_train_windows)]
        train_vectors, train_labels = test_vectors[train_idx], [test.labels[i] for i in train_idx]
        scored_vectors, scored_labels = test_vectors[test_idx], [test.labels[i] for i in test_idx]
        split = "test store split in half by media"
    else:
        train = labeled_windows(train_store)
        if len(train) == 0:
            raise UserError(
                f"the training store {train_store.root} has no labeled windows; attach clip "
                "labels with `coincide add-labels` or leave out --store."
            )
        train = train.subset(cap_windows(len(train), max_train_windows))
        train_vectors, train_labels = (
            representation.embed(train_store, train.positions),
            train.labels,
        )
        scored_vectors, scored_labels = test_vectors, test.labels
        split = f"trained on {train_store.root}"
    # Classes seen only on one side still count: the union keeps the columns aligned.
    score = shallow_classifier_map(
        train_vectors, train_labels, scored_vectors, scored_labels, seed=seed
    )
    return {
        "shallow_map": score,
        "shallow_split": split,
        "shallow_train_windows": len(train_labels),
        "shallow_test_windows": len(scored_labels),
        "shallow_seed": seed,
    }
