"""Evaluation metrics of the paper (section 4) as plain functions over NumPy arrays.

Shapes: `n` examples (0.96 s windows or clips), `d` embedding dimensions, `C` classes.
Labels come either as one list of class names per example or as an `(n, C)` boolean matrix.

- Query-by-example retrieval (paper 4.1): in `coincide.evaluation.qbe`, on the label helpers here.
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


def as_label_matrix(
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


_UNDEFINED_AUC = (
    "no class has both positive and negative examples in the evaluation labels, so {} is "
    "undefined; evaluate on labeled data with several classes."
)


def _defined_mean(per_class: np.ndarray, undefined: str) -> float:
    """The mean over the classes where the metric is defined (not NaN); UserError(`undefined`)
    when it is defined for none."""
    if np.isnan(per_class).all():
        raise UserError(undefined)
    return float(np.nanmean(per_class))


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
    return _defined_mean(
        per_class_average_precision(y_true, scores),
        "no class has a positive example in the evaluation labels, so mAP is undefined; "
        "evaluate on labeled data.",
    )


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
    return _defined_mean(per_class_auc(y_true, scores), _UNDEFINED_AUC.format("AUC"))


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
        raise UserError(_UNDEFINED_AUC.format("d'"))
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
    return group_means(window_scores, clip_ids, ("window_scores", "clip_ids"))


def group_means(
    rows: npt.ArrayLike, ids: npt.ArrayLike, names: tuple[str, str] = ("rows", "ids")
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct `ids` `(k,)` and the mean of `rows` `(n, m)` over each id `(k, m)`;
    ValueError, naming the two arguments `names`, when their shapes do not fit."""
    values = np.asarray(rows, dtype=np.float64)
    keys = np.asarray(ids)
    if values.ndim != 2 or keys.shape != (values.shape[0],):
        raise ValueError(
            f"{names[0]} must be (n, m) and {names[1]} (n,); got {values.shape} and {keys.shape}"
        )
    groups, group_of_row = np.unique(keys, return_inverse=True)
    group_of_row = group_of_row.reshape(-1)
    sums = np.zeros((len(groups), values.shape[1]))
    np.add.at(sums, group_of_row, values)
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
    train_y, class_names = as_label_matrix(train_labels, classes, len(train_x))
    test_y, _ = as_label_matrix(test_labels, class_names, len(test_x))
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
