"""Evaluation metrics of the paper (section 4) as plain functions over NumPy arrays.

Shapes: `n` examples (0.96 s windows or clips), `d` embedding dimensions, `C` classes.
Labels come either as one list of class names per example or as an `(n, C)` boolean matrix.

- Query-by-example retrieval (paper 4.1, after Jansen et al. 2018 [11]): `qbe_map` over
  windows (pairs of windows of one media left out when `media` is given), and `clip_qbe_map`
  over clips (one mean embedding per media, `clip_embeddings`).
- Shallow classifier on a frozen embedding (paper 4.1): `shallow_classifier_map`.
- Recovery of the baseline-to-topline range (Table 1): `recovery`.
- Clustering and propagated-label quality (Table 2): `v_measure`, `propagated_label_quality`.
- Clip-level classifier scores (Table 3): `clip_scores`, `mean_average_precision`, `mean_auc`,
  `d_prime`, `mean_d_prime`.

Where scikit-learn has the metric (average precision, ROC AUC, V-measure) it is used as is.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy.stats import norm
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import average_precision_score, roc_auc_score, v_measure_score
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from coincide.errors import UserError

Labels = Sequence[Sequence[str]] | npt.NDArray[np.bool_]

# QbE sample sizes per class. Jansen et al. [11] sample a set of positives and negatives per
# class without the paper stating the size here; 100 + 100 keeps every class's pair set at
# 4,950 within-class pairs against 10,000 cross pairs, and costs 200x200 similarities per class.
QBE_POSITIVES_PER_CLASS = 100
QBE_NEGATIVES_PER_CLASS = 100


def labels_to_matrix(
    labels: Sequence[Sequence[str]],
    classes: Sequence[str] | None = None,
    *,
    ignore_unknown: bool = False,
) -> tuple[npt.NDArray[np.bool_], list[str]]:
    """Turn one list of class names per example into a multi-hot matrix.

    Args:
        labels: `n` lists of class names (an empty list is an example with no label).
        classes: the class order of the matrix columns; `None` uses the sorted union of `labels`.
        ignore_unknown: drop names not in `classes` (e.g. to evaluate on a class subset, as
            the paper's 115-class Table 3) instead of raising.

    Returns:
        `(matrix, classes)`: matrix `(n, C)` bool, `matrix[i, c]` true when example `i` has
        class `classes[c]`; and the class names, `C` of them.
    """
    if isinstance(labels, str):
        raise TypeError("labels must be one list of class names per example, not a string")
    if classes is None:
        class_names = sorted({name for names in labels for name in names})
    else:
        class_names = list(classes)
        if len(set(class_names)) != len(class_names):
            raise ValueError("classes contains a name twice")
    column = {name: c for c, name in enumerate(class_names)}
    matrix = np.zeros((len(labels), len(class_names)), dtype=bool)
    for i, names in enumerate(labels):
        if isinstance(names, str):
            raise TypeError(f"labels[{i}] is a string; give a list of class names per example")
        for name in names:
            c = column.get(name)
            if c is not None:
                matrix[i, c] = True
            elif not ignore_unknown:
                raise UserError(
                    f"label {name!r} of example {i} is not in the class list; add it to the "
                    "classes or pass ignore_unknown=True to evaluate on the listed classes only."
                )
    return matrix, class_names


def _as_label_matrix(
    labels: Labels, classes: Sequence[str] | None, n: int
) -> tuple[npt.NDArray[np.bool_], list[str]]:
    """`(n, C)` bool matrix and class names from either accepted label form."""
    if isinstance(labels, np.ndarray):
        if labels.ndim != 2 or labels.shape[0] != n:
            raise ValueError(f"label matrix must have shape ({n}, C), got {labels.shape}")
        matrix = labels.astype(bool)
        if classes is None:
            names = [str(c) for c in range(matrix.shape[1])]
        else:
            names = list(classes)
            if len(names) != matrix.shape[1]:
                raise ValueError(f"{len(names)} class names for {matrix.shape[1]} label columns")
        return matrix, names
    if len(labels) != n:
        raise ValueError(f"{len(labels)} label lists for {n} examples")
    return labels_to_matrix(labels, classes)


def _check_scores(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(y_true)
    score = np.asarray(scores, dtype=np.float64)
    if truth.ndim != 2 or truth.shape != score.shape:
        raise ValueError(
            f"y_true and scores must both be (n, C); got {truth.shape} and {score.shape}"
        )
    return truth.astype(bool), score


# ---------------------------------------------------------------------------------------------
# Query-by-example retrieval (paper 4.1)


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
    matrix, class_names = _as_label_matrix(labels, classes, len(vectors))
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
    classes: Sequence[str] | None = None,
    positives_per_class: int = QBE_POSITIVES_PER_CLASS,
    negatives_per_class: int = QBE_NEGATIVES_PER_CLASS,
    include_negative_pairs: bool = False,
    seed: int = 0,
) -> float:
    """Query-by-example retrieval mAP: mean over the scored classes of
    `qbe_average_precision_per_class` (see there for the sampling, the same-media pairs left
    out when `media` is given, and the skipped classes).

    Args:
        embeddings: `(n, d)`; labels: `n` lists of class names or an `(n, C)` bool matrix;
        media: `(n,)` media ids, or None.

    Returns:
        mAP in [0, 1]. A random embedding scores about the rate of within-class pairs among the
        pairs ranked; without same-media exclusion `P(P-1)/2 / (P(P-1)/2 + P*N)` (0.33 for 100
        positives and 100 negatives), lower with it.
    """
    per_class = qbe_average_precision_per_class(
        embeddings,
        labels,
        media=media,
        same_media_pairs=same_media_pairs,
        classes=classes,
        positives_per_class=positives_per_class,
        negatives_per_class=negatives_per_class,
        include_negative_pairs=include_negative_pairs,
        seed=seed,
    )
    if not per_class:
        raise UserError(
            "no class has 2 positive examples (of 2 different media, when pairs of one media "
            "are left out) and 1 negative example, so QbE retrieval cannot be scored; evaluate "
            "on a labeled store with several clips per class."
        )
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
    vectors = np.asarray(embeddings, dtype=np.float64)
    ids = np.asarray(media)
    if vectors.ndim != 2 or ids.shape != (vectors.shape[0],):
        raise ValueError(
            f"embeddings must be (n, d) and media (n,); got {vectors.shape} and {ids.shape}"
        )
    return _group_means(vectors, ids)


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
    matrix, class_names = _as_label_matrix(labels, classes, len(ids))
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
    embeddings: npt.ArrayLike,
    labels: Labels,
    media: npt.ArrayLike,
    *,
    classes: Sequence[str] | None = None,
    positives_per_class: int = QBE_POSITIVES_PER_CLASS,
    negatives_per_class: int = QBE_NEGATIVES_PER_CLASS,
    include_negative_pairs: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    """Clip-level QbE average precision of each class: `qbe_average_precision_per_class` over
    one mean embedding per media (`clip_embeddings`) with its clip labels (`clip_labels`). One
    vector per clip leaves no same-media pair to exclude; the samples count clips, not windows.

    Args:
        embeddings: `(n, d)` window embeddings; labels: `n` label lists or `(n, C)` bool, equal
        within a media; media: `(n,)` the media of each window.
    """
    clips, vectors = clip_embeddings(embeddings, media)
    _, matrix, class_names = clip_labels(labels, media, classes)
    return qbe_average_precision_per_class(
        vectors,
        matrix,
        classes=class_names,
        positives_per_class=positives_per_class,
        negatives_per_class=negatives_per_class,
        include_negative_pairs=include_negative_pairs,
        seed=seed,
    )


def clip_qbe_map(
    embeddings: npt.ArrayLike,
    labels: Labels,
    media: npt.ArrayLike,
    *,
    classes: Sequence[str] | None = None,
    positives_per_class: int = QBE_POSITIVES_PER_CLASS,
    negatives_per_class: int = QBE_NEGATIVES_PER_CLASS,
    include_negative_pairs: bool = False,
    seed: int = 0,
) -> float:
    """Clip-level QbE mAP: `qbe_map(clip_vectors, clip_labels)` with one mean embedding per
    media (see `clip_qbe_average_precision_per_class`). Shapes: embeddings `(n, d)`, labels `n`
    lists or `(n, C)`, media `(n,)`; raises ValueError when a media's windows disagree."""
    per_class = clip_qbe_average_precision_per_class(
        embeddings,
        labels,
        media,
        classes=classes,
        positives_per_class=positives_per_class,
        negatives_per_class=negatives_per_class,
        include_negative_pairs=include_negative_pairs,
        seed=seed,
    )
    if not per_class:
        raise UserError(
            "no class has 2 labeled clips and a clip without it, so clip-level QbE retrieval "
            "cannot be scored; evaluate on a labeled store with several clips per class."
        )
    return float(np.mean(list(per_class.values())))


# ---------------------------------------------------------------------------------------------
# Classification metrics (paper 4.1 shallow classifier, 4.2 Table 3)


def per_class_average_precision(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> np.ndarray:
    """Average precision of each class (sklearn).

    Args:
        y_true: `(n, C)` binary labels; scores: `(n, C)` class scores.

    Returns:
        `(C,)` average precision; NaN for a class with no positive example (undefined).
    """
    truth, score = _check_scores(y_true, scores)
    result = np.full(truth.shape[1], np.nan)
    for c in range(truth.shape[1]):
        if truth[:, c].any():
            result[c] = average_precision_score(truth[:, c], score[:, c])
    return result


def mean_average_precision(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Mean over classes of the average precision, skipping classes with no positive example
    (their AP is undefined, and counting them as 0 would punish a classifier for the test set).

    Args:
        y_true: `(n, C)` binary labels; scores: `(n, C)` class scores.
    """
    per_class = per_class_average_precision(y_true, scores)
    if np.isnan(per_class).all():
        raise UserError(
            "no class has a positive example in the evaluation labels, so mAP is undefined; "
            "evaluate on labeled data."
        )
    return float(np.nanmean(per_class))


def per_class_auc(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> np.ndarray:
    """ROC AUC of each class (sklearn).

    Args:
        y_true: `(n, C)` binary labels; scores: `(n, C)` class scores.

    Returns:
        `(C,)` AUC; NaN for a class with no positive or no negative example (undefined).
    """
    truth, score = _check_scores(y_true, scores)
    result = np.full(truth.shape[1], np.nan)
    for c in range(truth.shape[1]):
        if truth[:, c].any() and not truth[:, c].all():
            result[c] = roc_auc_score(truth[:, c], score[:, c])
    return result


def mean_auc(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Mean over classes of the ROC AUC, skipping classes where it is undefined (no positive or
    no negative example). Shapes as `per_class_auc`."""
    per_class = per_class_auc(y_true, scores)
    if np.isnan(per_class).all():
        raise UserError(
            "no class has both positive and negative examples in the evaluation labels, so AUC "
            "is undefined; evaluate on labeled data with several classes."
        )
    return float(np.nanmean(per_class))


def d_prime(auc: float) -> float:
    """d' = sqrt(2) * Phi^-1(AUC): the separation, in standard deviations, of two unit-variance
    Gaussians whose ROC has this AUC (AudioSet, Gemmeke et al. 2017). AUC 0.5 gives 0, AUC 1
    gives +inf."""
    if not 0.0 <= auc <= 1.0:
        raise ValueError(f"AUC must lie in [0, 1], got {auc}")
    return float(math.sqrt(2.0) * norm.ppf(auc))


def mean_d_prime(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Mean over classes of d' computed from each class's AUC (the AudioSet convention: d' per
    class, then the mean), over the classes where AUC is defined. Shapes as `per_class_auc`.

    A class ranked perfectly (AUC 0 or 1) would have an infinite d' and make the mean infinite,
    however few examples it has. Its AUC is moved half an ordered pair inside the range first,
    to 1 - 1 / (2 P N) (P positives, N negatives): the resolution of the measurement, the usual
    finite-sample correction for rates of 0 or 1. Any other AUC is used as it is.
    """
    truth, _ = _check_scores(y_true, scores)
    per_class = per_class_auc(y_true, scores)
    defined = ~np.isnan(per_class)
    if not defined.any():
        raise UserError(
            "no class has both positive and negative examples in the evaluation labels, so d' "
            "is undefined; evaluate on labeled data with several classes."
        )
    positives = truth.sum(axis=0)
    half_pair = 0.5 / (positives * (len(truth) - positives))[defined]
    auc = np.clip(per_class[defined], half_pair, 1.0 - half_pair)
    return float(np.mean([d_prime(float(a)) for a in auc]))


def clip_scores(
    window_scores: npt.ArrayLike, clip_ids: npt.ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """Clip-level scores: the mean of each class score over the clip's 0.96 s windows (paper 4.2,
    following AudioSet [35]).

    Args:
        window_scores: `(n, C)` scores of `n` windows.
        clip_ids: `(n,)` the clip of each window (any sortable ids).

    Returns:
        `(clips, scores)`: `(n_clips,)` the distinct clip ids, sorted; `(n_clips, C)` their mean
        window scores, row `k` for `clips[k]`.
    """
    score = np.asarray(window_scores, dtype=np.float64)
    ids = np.asarray(clip_ids)
    if score.ndim != 2 or ids.shape != (score.shape[0],):
        raise ValueError(
            f"window_scores must be (n, C) and clip_ids (n,); got {score.shape} and {ids.shape}"
        )
    return _group_means(score, ids)


def _group_means(rows: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct `ids` `(k,)` and the mean of `rows` `(n, m)` over each id `(k, m)`."""
    groups, group_of_row = np.unique(ids, return_inverse=True)
    group_of_row = group_of_row.reshape(-1)
    sums = np.zeros((len(groups), rows.shape[1]))
    np.add.at(sums, group_of_row, rows)
    counts = np.bincount(group_of_row, minlength=len(groups))
    return groups, sums / counts[:, None]


def shallow_classifier_map(
    train_embeddings: npt.ArrayLike,
    train_labels: Labels,
    test_embeddings: npt.ArrayLike,
    test_labels: Labels,
    *,
    classes: Sequence[str] | None = None,
    hidden: int = 512,
    epochs: int = 100,
    seed: int = 0,
) -> float:
    """mAP of a one-hidden-layer classifier trained on a frozen embedding (paper 4.1).

    The network is scikit-learn's MLPClassifier: one `hidden`-unit ReLU layer and one sigmoid
    output per class (multi-label, as for AudioSet; mutually exclusive labels are one-hot rows),
    Adam (lr 1e-3, batch 256, L2 1e-4) for at most `epochs` passes, stopping earlier once the
    training loss stops improving. Embeddings are standardised with the training split's
    mean and variance first, so that representations of different scale (the log-mel baseline
    against unit-norm embeddings) meet the same optimiser settings.

    Args:
        train_embeddings: `(n_train, d)`; train_labels: `n_train` label lists or `(n_train, C)`.
        test_embeddings: `(n_test, d)`; test_labels: `n_test` label lists or `(n_test, C)`.
        classes: class names and order; `None` uses the sorted union of both splits' labels
            (or the matrix columns).

    Returns:
        `mean_average_precision` of the test split, over test classes with a positive example.
    """
    train_x = np.asarray(train_embeddings, dtype=np.float64)
    test_x = np.asarray(test_embeddings, dtype=np.float64)
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(
            f"embeddings must be (n, d) with the same d; got {train_x.shape} and {test_x.shape}"
        )
    if classes is None and not isinstance(train_labels, np.ndarray):
        if isinstance(test_labels, np.ndarray):
            raise ValueError("give both label sets as lists or both as matrices")
        classes = sorted({name for names in [*train_labels, *test_labels] for name in names})
    train_y, class_names = _as_label_matrix(train_labels, classes, len(train_x))
    test_y, _ = _as_label_matrix(test_labels, class_names, len(test_x))
    if train_y.shape[1] != test_y.shape[1]:
        raise ValueError(f"{train_y.shape[1]} training classes but {test_y.shape[1]} test classes")
    if not train_y.any():
        raise UserError("the training split has no labels; train the shallow classifier on labels.")

    scaler = StandardScaler().fit(train_x)
    network = MLPClassifier(
        hidden_layer_sizes=(hidden,),
        activation="relu",
        solver="adam",
        alpha=1e-4,
        batch_size=min(256, len(train_x)),
        learning_rate_init=1e-3,
        max_iter=epochs,
        random_state=seed,
    )
    with warnings.catch_warnings():
        # Stopping at the epoch budget is the protocol, not a failure.
        warnings.simplefilter("ignore", ConvergenceWarning)
        network.fit(scaler.transform(train_x), train_y.astype(int))
    test_scores = network.predict_proba(scaler.transform(test_x))
    if train_y.shape[1] == 1:
        # sklearn treats a single indicator column as binary and returns [P(0), P(1)].
        test_scores = test_scores[:, 1:]
    return mean_average_precision(test_y, test_scores)


# ---------------------------------------------------------------------------------------------
# Table summaries (recovery) and clustering (Table 2)


def recovery(score: float, baseline: float, topline: float) -> float:
    """Percent of the baseline-to-topline range reached: 100 (score - baseline) / (topline -
    baseline). Baseline scores 0, topline 100; below the baseline is negative (Table 1)."""
    if topline == baseline:
        raise ValueError(
            f"recovery is undefined when topline equals baseline (both {baseline}); "
            "the two reference systems must score differently"
        )
    return 100.0 * (score - baseline) / (topline - baseline)


def v_measure(true_labels: npt.ArrayLike, cluster_ids: npt.ArrayLike) -> float:
    """V-measure (Rosenberg & Hirschberg 2007, sklearn) of a clustering against one class per
    example: harmonic mean of homogeneity and completeness, in [0, 1].

    Args:
        true_labels: `(n,)` the class of each example (single-label, as the paper's 115-class
            subset); cluster_ids: `(n,)` the cluster of each example.
    """
    truth = np.asarray(true_labels)
    clusters = np.asarray(cluster_ids)
    if truth.ndim != 1 or truth.shape != clusters.shape:
        raise ValueError(
            f"true_labels and cluster_ids must both be (n,); got {truth.shape} and {clusters.shape}"
        )
    return float(v_measure_score(truth, clusters))


def propagated_label_quality(
    true_labels: npt.ArrayLike, propagated: npt.ArrayLike
) -> tuple[float, float]:
    """Precision and recall of labels propagated from labeled cluster members (paper Table 2).

    Counted over (example, class) cells of the `(n, C)` matrices, pooled over all classes:
        precision = |propagated AND true| / |propagated|  (correct share of the labels given)
        recall    = |propagated AND true| / |true|        (share of the true labels recovered)
    Examples that received no label count in recall (as misses) and not in precision.

    Args:
        true_labels: `(n, C)` bool, the ground truth; propagated: `(n, C)` bool, labels given.

    Returns:
        `(precision, recall)`; precision is NaN when nothing was propagated (undefined).
    """
    truth = np.asarray(true_labels).astype(bool)
    given = np.asarray(propagated).astype(bool)
    if truth.ndim != 2 or truth.shape != given.shape:
        raise ValueError(
            f"true_labels and propagated must both be (n, C); got {truth.shape} and {given.shape}"
        )
    if not truth.any():
        raise UserError(
            "the ground-truth labels are empty, so label recall is undefined; "
            "score propagation against labeled data."
        )
    correct = int(np.count_nonzero(truth & given))
    n_given = int(np.count_nonzero(given))
    precision = correct / n_given if n_given else math.nan
    return precision, correct / int(np.count_nonzero(truth))
