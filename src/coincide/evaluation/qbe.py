"""Query-by-example retrieval (paper 4.1, after Jansen et al. 2018 [11]) over NumPy arrays.

`qbe_map` ranks windows (pairs of windows of one media left out when `media` is given: they
share the clip's label and all its nuisances), `clip_qbe_map` ranks clips (one mean embedding
per media, `clip_embeddings`). Shapes and label forms as in `coincide.evaluation.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict, Unpack

import numpy as np
import numpy.typing as npt
from sklearn.metrics import average_precision_score

from coincide.errors import UserError
from coincide.evaluation.metrics import Labels, as_label_matrix, group_means

# QbE sample sizes per class. Jansen et al. [11] sample a set of positives and negatives per
# class without the paper stating the size here; 100 + 100 keeps every class's pair set at
# 4,950 within-class pairs against 10,000 cross pairs, and costs 200x200 similarities per class.
QBE_POSITIVES_PER_CLASS = 100
QBE_NEGATIVES_PER_CLASS = 100


class QbeOptions(TypedDict, total=False):
    """The class and sampling options that the mAP and clip-level functions pass on to
    `qbe_average_precision_per_class` (see there for their meaning and defaults)."""

    classes: Sequence[str] | None
    positives_per_class: int
    negatives_per_class: int
    include_negative_pairs: bool
    seed: int


def qbe_average_precision_per_class(
    embeddings: npt.ArrayLike,
    labels: Labels,
    *,
    media: npt.ArrayLike | None = None,
    same_media_pairs: bool = False,
    classes: Sequence[str] | None = None,
    positives_per_class: int = QBE_POSITIVES_PER_CLASS,
    negatives_per_class: int = QBE_NEGATIVES_PER_CLASS,
    include_negative_pairs: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    """Query-by-example average precision of each class.

    For each class, up to `positives_per_class` examples with the class and up to
    `negatives_per_class` without it are drawn at random (seeded per class: the draw for a class
    does not depend on the other classes, nor on `media`). Cosine distances between all pairs of
    the drawn set (self-pairs excluded, each unordered pair once) are sorted ascending, and the
    average precision (sklearn) scores how well the within-class pairs (positive, positive) rank
    above the cross pairs (positive, negative).

    Same-media pairs: two windows of one clip share its clip-level labels and, being neighbours
    in one recording, are close under almost any embedding, so counting them rewards what the
    clip is rather than what the class is: one random vector per clip (every window of a clip
    identical) scores well above chance. Given `media`, every pair of two examples of the same
    media is left out of the ranking, within-class and cross pairs alike (the default);
    `same_media_pairs=True` counts them (the earlier definition, kept for comparison; `media` is
    then unused). With `media=None` there is nothing to leave out.

    Negative-negative pairs are left out by default: they carry no information about retrieving
    this class, and on data with few classes two negatives often share another class, so a
    perfect embedding would be charged for ranking them close. `include_negative_pairs=True`
    counts them as irrelevant pairs, the literal reading of "ranking within-class pairs higher".

    A class is scored only when its ranked pairs hold at least one within-class pair and one
    other pair: fewer than 2 positives, no negative, or (same-media pairs left out) positives
    all from one media leave it out of the result, so `len(result)` is the number of classes
    scored, which can be smaller without the same-media pairs.

    Chance: an embedding that knows nothing scores about the rate of within-class pairs among
    the pairs actually ranked. With P positives and N negatives drawn and, for each media m,
    p_m of the positives and n_m of the negatives, that is
    `W / (W + X)` with `W = P(P-1)/2 - sum_m p_m(p_m-1)/2` and `X = P*N - sum_m p_m n_m` (clip
    labels make every n_m with p_m > 0 zero), lower than the `P(P-1)/2 / (P(P-1)/2 + P*N)` of
    the count with same-media pairs. With few distinct media per class the average precision of
    a random ranking sits slightly above that rate (mean 0.197 against 0.192 over 40 random
    draws, with every window drawn from 3 classes of 20 clips of 10 windows).

    Args:
        embeddings: `(n, d)` one embedding per example.
        labels: `n` lists of class names, or an `(n, C)` bool matrix.
        media: `(n,)` the media (clip) of each example, any comparable ids; None: no grouping.
        same_media_pairs: rank pairs of two examples of the same media too (the old variant).
        classes: class names (the matrix's column names, or the class subset and order for lists).
        positives_per_class, negatives_per_class: sample sizes per class.
        include_negative_pairs: also rank negative-negative pairs (as irrelevant).
        seed: sampling seed.

    Returns:
        `{class name: average precision}` for every class that could be scored.
    """
    vectors = np.asarray(embeddings, dtype=np.float64)
    if vectors.ndim != 2:
        raise ValueError(f"embeddings must be (n, d), got shape {vectors.shape}")
    if positives_per_class < 2 or negatives_per_class < 1:
        raise ValueError("QbE needs at least 2 positives and 1 negative per class")
    matrix, class_names = as_label_matrix(labels, classes, len(vectors))
    group = None
    if media is not None and not same_media_pairs:
        group = _media_codes(media, len(vectors))
    # Cosine distance = 1 - dot product of unit vectors; a zero vector has no direction, the
    # floor on its norm makes it equally far (similarity 0) from everything.
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.maximum(norms, 1e-12)

    result: dict[str, float] = {}
    for c, name in enumerate(class_names):
        positives = np.flatnonzero(matrix[:, c])
        negatives = np.flatnonzero(~matrix[:, c])
        if len(positives) < 2 or len(negatives) == 0:
            continue
        rng = np.random.default_rng([seed, c])
        positives = rng.choice(positives, min(len(positives), positives_per_class), replace=False)
        negatives = rng.choice(negatives, min(len(negatives), negatives_per_class), replace=False)
        members = np.concatenate([positives, negatives])
        is_positive = np.arange(len(members)) < len(positives)

        distance = 1.0 - unit[members] @ unit[members].T
        first, second = np.triu_indices(len(members), k=1)
        keep = np.ones(len(first), dtype=bool)
        if not include_negative_pairs:
            keep &= is_positive[first] | is_positive[second]
        if group is not None:
            keep &= group[members][first] != group[members][second]
        first, second = first[keep], second[keep]
        within_class = is_positive[first] & is_positive[second]
        if within_class.all() or not within_class.any():
            continue  # nothing to retrieve, or nothing to rank it against
        # Ascending distance is the ranking, so the score is the negated distance.
        result[name] = float(average_precision_score(within_class, -distance[first, second]))
    return result


def _media_codes(media: npt.ArrayLike, n: int) -> np.ndarray:
    """`(n,)` int codes of the media ids (equal ids, equal codes)."""
    ids = np.asarray(media)
    if ids.shape != (n,):
        raise ValueError(f"media must be ({n},), one id per example; got shape {ids.shape}")
    return np.unique(ids, return_inverse=True)[1].reshape(n)


def qbe_map(
    embeddings: npt.ArrayLike,
    labels: Labels,
    *,
    media: npt.ArrayLike | None = None,
    same_media_pairs: bool = False,
    **options: Unpack[QbeOptions],
) -> float:
    """Query-by-example retrieval mAP: mean over the scored classes of
    `qbe_average_precision_per_class` (see there for the options, the sampling, the same-media
    pairs left out when `media` is given, and the skipped classes).

    Args:
        embeddings: `(n, d)`; labels: `n` lists of class names or an `(n, C)` bool matrix;
        media: `(n,)` media ids, or None.

    Returns:
        mAP in [0, 1]. A random embedding scores about the rate of within-class pairs among the
        pairs ranked; without same-media exclusion `P(P-1)/2 / (P(P-1)/2 + P*N)` (0.33 for 100
        positives and 100 negatives), lower with it.
    """
    per_class = qbe_average_precision_per_class(
        embeddings, labels, media=media, same_media_pairs=same_media_pairs, **options
    )
    return scored_mean(
        per_class,
        "no class has 2 positive examples (of 2 different media, when pairs of one media "
        "are left out) and 1 negative example, so QbE retrieval cannot be scored; evaluate "
        "on a labeled store with several clips per class.",
    )


def scored_mean(per_class: dict[str, float], unscored: str) -> float:
    """The mean average precision over the scored classes; UserError(`unscored`) when none is."""
    if not per_class:
        raise UserError(unscored)
    return float(np.mean(list(per_class.values())))


def clip_embeddings(
    embeddings: npt.ArrayLike, media: npt.ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """Clip-level embeddings: the mean of each media's window embeddings (as `clip_scores`
    averages window scores).

    Args:
        embeddings: `(n, d)` embeddings of `n` windows.
        media: `(n,)` the media (clip) of each window (any sortable ids).

    Returns:
        `(clips, vectors)`: `(n_clips,)` the distinct media ids, sorted; `(n_clips, d)` their
        mean window embeddings, row `k` for `clips[k]`.
    """
    return group_means(embeddings, media, ("embeddings", "media"))


def clip_labels(
    labels: Labels, media: npt.ArrayLike, classes: Sequence[str] | None = None
) -> tuple[np.ndarray, npt.NDArray[np.bool_], list[str]]:
    """The clip-level labels of windows: each media's labels, taken from its first window.

    Args:
        labels: `n` lists of class names, or an `(n, C)` bool matrix, one per window.
        media: `(n,)` the media of each window (any sortable ids).
        classes: class names (the matrix's column names, or the class subset and order).

    Returns:
        `(clips, matrix, classes)`: `(n_clips,)` sorted media ids (as `clip_embeddings`),
        `(n_clips, C)` bool labels, and the class names.

    Raises:
        ValueError: two windows of one media have different labels (they are not clip labels).
    """
    ids = np.asarray(media)
    matrix, class_names = as_label_matrix(labels, classes, len(ids))
    if ids.shape != (len(matrix),):
        raise ValueError(f"media must be ({len(matrix)},), one id per window; got {ids.shape}")
    clips, first_window, clip_of_window = np.unique(ids, return_index=True, return_inverse=True)
    clip_matrix = matrix[first_window]
    disagree = (clip_matrix[clip_of_window.reshape(-1)] != matrix).any(axis=1)
    if disagree.any():
        window = int(np.flatnonzero(disagree)[0])
        raise ValueError(
            f"window {window} of media {str(ids[window])!r} has other labels than the "
            "media's first window; clip-level QbE needs one label set per media"
        )
    return clips, clip_matrix, class_names


def clip_qbe_average_precision_per_class(
    embeddings: npt.ArrayLike, labels: Labels, media: npt.ArrayLike, **options: Unpack[QbeOptions]
) -> dict[str, float]:
    """Clip-level QbE average precision of each class: `qbe_average_precision_per_class` over
    one mean embedding per media (`clip_embeddings`) with its clip labels (`clip_labels`). One
    vector per clip leaves no same-media pair to exclude; the samples count clips, not windows.

    Args:
        embeddings: `(n, d)` window embeddings; labels: `n` label lists or `(n, C)` bool, equal
        within a media; media: `(n,)` the media of each window.
    """
    clips, vectors = clip_embeddings(embeddings, media)
    _, matrix, class_names = clip_labels(labels, media, options.pop("classes", None))
    return qbe_average_precision_per_class(vectors, matrix, classes=class_names, **options)


def clip_qbe_map(
    embeddings: npt.ArrayLike, labels: Labels, media: npt.ArrayLike, **options: Unpack[QbeOptions]
) -> float:
    """Clip-level QbE mAP: `qbe_map(clip_vectors, clip_labels)` with one mean embedding per
    media (see `clip_qbe_average_precision_per_class`). Shapes: embeddings `(n, d)`, labels `n`
    lists or `(n, C)`, media `(n,)`; raises ValueError when a media's windows disagree."""
    return scored_mean(
        clip_qbe_average_precision_per_class(embeddings, labels, media, **options),
        "no class has 2 labeled clips and a clip without it, so clip-level QbE retrieval "
        "cannot be scored; evaluate on a labeled store with several clips per class.",
    )
