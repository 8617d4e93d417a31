"""Metrics against worked examples computed by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coincide.errors import UserError
from coincide.evaluation.metrics import (
    clip_scores,
    d_prime,
    labels_to_matrix,
    mean_auc,
    mean_average_precision,
    mean_d_prime,
    per_class_average_precision,
    propagated_label_quality,
    recovery,
    shallow_classifier_map,
    v_measure,
)
from coincide.evaluation.qbe import (
    clip_embeddings,
    clip_labels,
    clip_qbe_average_precision_per_class,
    clip_qbe_map,
    qbe_average_precision_per_class,
    qbe_map,
)

# ---------------------------------------------------------------------------------------------
# labels_to_matrix


def test_labels_to_matrix_sorted_union_of_names():
    matrix, classes = labels_to_matrix([["dog"], ["cat", "dog"], []])
    assert classes == ["cat", "dog"]
    np.testing.assert_array_equal(matrix, [[False, True], [True, True], [False, False]])


def test_labels_to_matrix_given_classes_and_unknown_names():
    matrix, classes = labels_to_matrix(
        [["dog", "bird"], ["cat"]], ["dog", "cat"], ignore_unknown=True
    )
    assert classes == ["dog", "cat"]
    np.testing.assert_array_equal(matrix, [[True, False], [False, True]])
    with pytest.raises(UserError, match="'bird'"):
        labels_to_matrix([["dog", "bird"]], ["dog", "cat"])


# ---------------------------------------------------------------------------------------------
# Query-by-example retrieval


def _unit(angle_degrees: float) -> list[float]:
    radians = math.radians(angle_degrees)
    return [math.cos(radians), math.sin(radians)]


# Four unit vectors at 0, 60, 30 and 180 degrees; classes A, A, B, B.
# Cosine distance 1 - cos(angle between):
#   (0,1) 60deg -> 0.5     (0,2) 30deg -> 0.134   (0,3) 180deg -> 2
#   (1,2) 30deg -> 0.134   (1,3) 120deg -> 1.5    (2,3) 150deg -> 1.866
QBE_EMBEDDINGS = np.array([_unit(0), _unit(60), _unit(30), _unit(180)])
QBE_LABELS = [["A"], ["A"], ["B"], ["B"]]


def test_qbe_worked_example():
    per_class = qbe_average_precision_per_class(QBE_EMBEDDINGS, QBE_LABELS)
    # A: pairs with a positive, ascending: (0,2) .134, (1,2) .134, (0,1) .5 [within], (1,3) 1.5,
    #    (0,3) 2 -> the one within-class pair is ranked 3rd: AP = 1/3.
    # B: (0,2) .134, (1,2) .134, (1,3) 1.5, (2,3) 1.866 [within], (0,3) 2 -> 4th: AP = 1/4.
    assert per_class == pytest.approx({"A": 1 / 3, "B": 1 / 4})
    assert qbe_map(QBE_EMBEDDINGS, QBE_LABELS) == pytest.approx((1 / 3 + 1 / 4) / 2)


def test_qbe_with_negative_pairs_counts_them_as_irrelevant():
    per_class = qbe_average_precision_per_class(
        QBE_EMBEDDINGS, QBE_LABELS, include_negative_pairs=True
    )
    # A gains the negative pair (2,3) 1.866, ranked after the within pair: AP stays 1/3.
    # B gains (0,1) .5, ranked before its within pair, now 5th: AP = 1/5.
    assert per_class == pytest.approx({"A": 1 / 3, "B": 1 / 5})


def test_qbe_accepts_a_matrix_with_class_names_and_scales_do_not_matter():
    matrix = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=bool)
    scaled = QBE_EMBEDDINGS * np.array([[3.0], [0.5], [10.0], [2.0]])  # cosine ignores length
    per_class = qbe_average_precision_per_class(scaled, matrix, classes=["A", "B"])
    assert per_class == pytest.approx({"A": 1 / 3, "B": 1 / 4})


def test_qbe_perfect_embedding_scores_one():
    classes = np.repeat(np.arange(5), 20)
    one_hot = np.eye(5)[classes]
    labels = one_hot.astype(bool)
    assert qbe_map(one_hot, labels) == 1.0
    # Counting negative-negative pairs punishes the same perfect embedding: two negatives of
    # one other class sit at distance 0, tied with the within-class pairs.
    assert qbe_map(one_hot, labels, include_negative_pairs=True) < 0.9


def test_qbe_random_embedding_scores_the_within_pair_rate():
    rng = np.random.default_rng(1)
    labels = np.eye(5, dtype=bool)[np.repeat(np.arange(5), 400)]
    embeddings = rng.normal(size=(2000, 32))
    # 100 positives, 100 negatives: 4950 within pairs among 4950 + 100*100 -> 0.331.
    rate = 4950 / (4950 + 100 * 100)
    assert qbe_map(embeddings, labels, seed=3) == pytest.approx(rate, abs=0.02)


def test_qbe_sampling_is_seeded_and_per_class():
    rng = np.random.default_rng(2)
    labels = np.eye(3, dtype=bool)[np.repeat(np.arange(3), 50)]
    embeddings = rng.normal(size=(150, 3)) + 2.0 * labels
    kwargs = {"positives_per_class": 10, "negatives_per_class": 10}
    first = qbe_average_precision_per_class(embeddings, labels, seed=7, **kwargs)
    again = qbe_average_precision_per_class(embeddings, labels, seed=7, **kwargs)
    other = qbe_average_precision_per_class(embeddings, labels, seed=8, **kwargs)
    assert first == again
    assert first != other
    # A class's draw does not depend on the other classes.
    only_first_two = qbe_average_precision_per_class(
        embeddings, labels[:, :2], seed=7, classes=["0", "1"], **kwargs
    )
    assert only_first_two == {"0": first["0"], "1": first["1"]}


def test_qbe_skips_classes_that_cannot_be_scored():
    labels = [["A"], ["A"], ["B"], ["C"], ["A", "C"]]
    embeddings = np.random.default_rng(0).normal(size=(5, 4))
    # B has a single positive, so it has no within-class pair: skipped.
    per_class = qbe_average_precision_per_class(embeddings, labels)
    assert sorted(per_class) == ["A", "C"]
    everyone = [["A"], ["A"]]  # 2 positives, no negative
    with pytest.raises(UserError, match="QbE"):
        qbe_map(embeddings[:2], everyone)


# The worked example plus a fifth vector at 20 degrees, class A; media x y x y x.
# Cosine distances beyond the ones above: (0,4) 20deg -> 0.060, (1,4) 40deg -> 0.234,
# (2,4) 10deg -> 0.015, (3,4) 160deg -> 1.940. Same-media pairs: (0,2) (0,4) (2,4) of x, (1,3) of y.
MEDIA_EMBEDDINGS = np.array([_unit(0), _unit(60), _unit(30), _unit(180), _unit(20)])
MEDIA_LABELS = [["A"], ["A"], ["B"], ["B"], ["A"]]
MEDIA = ["x", "y", "x", "y", "x"]


def test_qbe_leaves_out_pairs_of_one_media_worked_example():
    per_class = qbe_average_precision_per_class(MEDIA_EMBEDDINGS, MEDIA_LABELS, media=MEDIA)
    # A (positives 0 1 4): the within pair (0,4) and the cross pairs (0,2) (2,4) (1,3) go; left,
    #   ascending: (1,2) .134, (1,4) .234 [within], (0,1) .5 [within], (3,4) 1.94, (0,3) 2
    #   -> AP = (1/2 + 2/3) / 2 = 7/12.
    # B (positives 2 3): (0,2) (2,4) (1,3) go; left: (1,2) .134, (2,3) 1.866 [within],
    #   (3,4) 1.94, (0,3) 2 -> AP = 1/2.
    assert per_class == pytest.approx({"A": 7 / 12, "B": 1 / 2})
    assert qbe_map(MEDIA_EMBEDDINGS, MEDIA_LABELS, media=MEDIA) == pytest.approx((7 / 12 + 0.5) / 2)
    # Counting them (the old variant): A ranks (2,4) .015, (0,4) .060 [within], (0,2) .134,
    #   (1,2) .134, (1,4) .234 [within], (0,1) .5 [within], ... -> (1/2 + 2/5 + 3/6) / 3 = 0.4667;
    # B ranks its within pair (2,3) 5th after (2,4) (0,2) (1,2) (1,3) -> 1/5.
    old = qbe_average_precision_per_class(
        MEDIA_EMBEDDINGS, MEDIA_LABELS, media=MEDIA, same_media_pairs=True
    )
    assert old == pytest.approx({"A": 1.4 / 3, "B": 1 / 5})
    assert qbe_average_precision_per_class(MEDIA_EMBEDDINGS, MEDIA_LABELS) == old


def test_qbe_skips_a_class_whose_positives_share_one_media():
    # A's two positives are both from media x: its only within pair is left out, so A is not
    # scored; B's positives (y, z) keep their pair and every cross pair: AP 1/4 as without media.
    per_class = qbe_average_precision_per_class(
        QBE_EMBEDDINGS, QBE_LABELS, media=["x", "x", "y", "z"]
    )
    assert per_class == pytest.approx({"B": 1 / 4})
    with pytest.raises(UserError, match="2 different media"):
        qbe_map(QBE_EMBEDDINGS, QBE_LABELS, media=["x", "x", "y", "y"])
    with pytest.raises(ValueError, match="media must be"):
        qbe_map(QBE_EMBEDDINGS, QBE_LABELS, media=["x", "y"])


def test_one_random_vector_per_clip_scores_chance_only_without_same_media_pairs():
    # 60 clips of 10 identical windows, 20 clips per class, each clip one random vector: the
    # embedding knows the clip and nothing of the class. Every window is drawn (600 + 600), so the
    # ranked pairs are known: per class 200 positives and 400 negatives,
    #   without same-media pairs: within 200*199/2 - 20 * 10*9/2 = 19,000, cross 80,000
    #   with them:                within 19,900,                        cross 80,000.
    media = np.repeat(np.arange(60), 10)
    labels = np.eye(3, dtype=bool)[media % 3]
    everyone = {"positives_per_class": 600, "negatives_per_class": 600}
    honest, old = [], []
    for draw in range(10):
        vectors = np.random.default_rng(draw).normal(size=(60, 64))[media]
        honest.append(qbe_map(vectors, labels, media=media, **everyone))
        old.append(qbe_map(vectors, labels, media=media, same_media_pairs=True, **everyone))
    # Over 40 draws one draw's mAP spread by 0.009 under both definitions, so the mean of 10 has a
    # standard error of 0.003; a random ranking of this few distinct clip pairs sits about 0.005
    # above the pair rate. The old count ranks the 900 same-clip pairs (distance 0) first.
    assert np.mean(honest) == pytest.approx(19_000 / 99_000, abs=0.012)
    assert np.mean(old) > 19_900 / 99_900 + 0.04


def test_clip_embeddings_are_the_mean_of_each_media():
    windows = [[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [0.0, 6.0]]
    clips, vectors = clip_embeddings(windows, ["b", "a", "b", "b"])
    # a: its one window; b: mean of [1, 0], [5, 4], [0, 6] = [2, 10/3].
    assert list(clips) == ["a", "b"]
    np.testing.assert_allclose(vectors, [[3.0, 2.0], [2.0, 10 / 3]])
    with pytest.raises(ValueError, match="media"):
        clip_embeddings(windows, ["a", "b"])


def test_clip_labels_come_from_the_media_and_must_agree():
    clips, matrix, classes = clip_labels([["dog"], ["cat"], ["dog"]], ["m2", "m1", "m2"])
    assert list(clips) == ["m1", "m2"] and classes == ["cat", "dog"]
    np.testing.assert_array_equal(matrix, [[True, False], [False, True]])
    with pytest.raises(ValueError, match="window 2 of media 'm2'"):
        clip_labels([["dog"], ["cat"], ["cat", "dog"]], ["m2", "m1", "m2"])
    with pytest.raises(ValueError, match="other labels"):
        clip_qbe_map(np.zeros((3, 2)), [["dog"], ["cat"], ["cat"]], ["m2", "m1", "m2"])


def test_clip_qbe_ranks_one_mean_vector_per_clip():
    # Windows: clip u (A) = 0 and 40 deg, mean direction 20 deg; clip v (A) = 60 deg;
    # clip w (B) = 30 deg; clip z (B) = 180 deg. Clip vectors at 20, 60, 30, 180 degrees.
    windows = np.array([_unit(0), _unit(40), _unit(60), _unit(30), _unit(180)])
    labels = [["A"], ["A"], ["A"], ["B"], ["B"]]
    media = ["u", "u", "v", "w", "z"]
    clip_vectors = np.array([_unit(20), _unit(60), _unit(30), _unit(180)])
    expected = qbe_average_precision_per_class(clip_vectors, [["A"], ["A"], ["B"], ["B"]])
    per_class = clip_qbe_average_precision_per_class(windows, labels, media)
    assert per_class == pytest.approx(expected)
    # A: (u,w) 10deg .015, (v,w) 30deg .134, (u,v) 40deg .234 [within], (v,z), (u,z) -> 1/3.
    assert per_class["A"] == pytest.approx(1 / 3)
    assert clip_qbe_map(windows, labels, media) == pytest.approx(np.mean(list(expected.values())))
    with pytest.raises(UserError, match="clip-level QbE"):
        clip_qbe_map(windows[:3], labels[:3], media[:3])  # A's clips only, no negative


# ---------------------------------------------------------------------------------------------
# mAP, AUC, d'

# Class 0: labels 1 0 1 0, scores .9 .8 .3 .1
# Class 1: labels 0 1 0 0, scores .2 .6 .7 .1
# Class 2: no positive (skipped)
Y_TRUE = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
SCORES = np.array([[0.9, 0.2, 0.5], [0.8, 0.6, 0.4], [0.3, 0.7, 0.3], [0.1, 0.1, 0.2]])


def test_mean_average_precision_worked_example():
    # Class 0 ranking .9(+) .8(-) .3(+) .1(-): precisions at the positives 1/1 and 2/3 -> 5/6.
    # Class 1 ranking .7(-) .6(+): precision 1/2 at its positive -> 1/2.
    # Class 2 has no positive and is skipped: mAP = (5/6 + 1/2) / 2 = 2/3.
    per_class = per_class_average_precision(Y_TRUE, SCORES)
    np.testing.assert_allclose(per_class[:2], [5 / 6, 1 / 2])
    assert np.isnan(per_class[2])
    assert mean_average_precision(Y_TRUE, SCORES) == pytest.approx(2 / 3)


def test_average_precision_with_tied_scores():
    # A tie is one threshold: .9(+) gives P=1 at R=1/2; the tie {+,-} at .5 gives P=2/3 at R=1.
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    assert mean_average_precision([[1], [0], [1]], [[0.5], [0.5], [0.9]]) == pytest.approx(5 / 6)
    # All tied: P = 1/2 at R = 1.
    assert mean_average_precision([[1], [0]], [[0.5], [0.5]]) == pytest.approx(0.5)


def test_mean_average_precision_without_any_positive_is_a_user_error():
    with pytest.raises(UserError, match="mAP"):
        mean_average_precision(np.zeros((3, 2)), np.ones((3, 2)))


def test_mean_auc_and_d_prime_worked_example():
    # Class 0: positives {.9, .3} vs negatives {.8, .1}: .9>.8, .9>.1, .3>.1, .3<.8 -> 3/4.
    # Class 1: positive {.6} vs {.2, .7, .1}: beats .2 and .1 -> 2/3.  Class 2 skipped.
    assert mean_auc(Y_TRUE, SCORES) == pytest.approx((3 / 4 + 2 / 3) / 2)
    # Phi^-1(3/4) = 0.674490, Phi^-1(2/3) = 0.430727 (normal tables);
    # d' = sqrt(2) * those = 0.953873, 0.609140; mean 0.781506.
    assert mean_d_prime(Y_TRUE, SCORES) == pytest.approx((0.953873 + 0.609140) / 2, abs=1e-5)


def test_mean_d_prime_of_a_perfect_class_is_finite_at_half_a_pair():
    # Class 0: 2 positives above 3 negatives (AUC 1) -> AUC 1 - 1/(2*2*3) = 11/12;
    # class 1: 1 positive below 4 negatives (AUC 0) -> 1/8.
    y_true = [[1, 0], [1, 0], [0, 0], [0, 1], [0, 0]]
    scores = [[0.9, 0.9], [0.8, 0.8], [0.1, 0.7], [0.2, 0.1], [0.3, 0.6]]
    expected = (d_prime(11 / 12) + d_prime(1 / 8)) / 2
    assert mean_d_prime(y_true, scores) == pytest.approx(expected)
    assert math.isfinite(expected)


def test_auc_counts_a_tie_as_half():
    # One positive, one negative, same score: half a correct ordering.
    assert mean_auc([[1], [0]], [[0.3], [0.3]]) == pytest.approx(0.5)


def test_d_prime_values():
    assert d_prime(0.5) == 0.0
    # Phi(1) = 0.8413447: one standard deviation each side -> d' = sqrt(2).
    assert d_prime(0.8413447460685429) == pytest.approx(math.sqrt(2))
    assert d_prime(1.0) == math.inf
    assert d_prime(0.25) == pytest.approx(-d_prime(0.75))
    with pytest.raises(ValueError):
        d_prime(1.5)


def test_mean_auc_skips_a_class_with_only_positives():
    y_true = [[1, 1], [0, 1]]
    scores = [[0.9, 0.1], [0.2, 0.5]]
    assert mean_auc(y_true, scores) == 1.0  # class 1 is all positive: undefined, skipped


# ---------------------------------------------------------------------------------------------
# Clip scores


def test_clip_scores_average_the_windows_of_each_clip():
    window_scores = [[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]]
    clips, scores = clip_scores(window_scores, ["b", "a", "b"])
    # a: its one window [3, 2]; b: mean of [1, 0] and [5, 5] = [3, 2.5].
    assert list(clips) == ["a", "b"]
    np.testing.assert_allclose(scores, [[3.0, 2.0], [3.0, 2.5]])


def test_clip_scores_reject_mismatched_ids():
    with pytest.raises(ValueError):
        clip_scores(np.zeros((3, 2)), [0, 1])


# ---------------------------------------------------------------------------------------------
# Recovery, V-measure, propagated labels


def test_recovery():
    assert recovery(0.421, baseline=0.421, topline=0.784) == 0.0
    assert recovery(0.784, baseline=0.421, topline=0.784) == pytest.approx(100.0)
    # The paper's Table 1, row k: (0.705 - 0.421) / (0.784 - 0.421) = 0.284 / 0.363 = 78.2%.
    assert recovery(0.705, baseline=0.421, topline=0.784) == pytest.approx(78.24, abs=0.01)
    assert recovery(0.3, baseline=0.4, topline=0.8) == pytest.approx(-25.0)
    with pytest.raises(ValueError, match="topline equals baseline"):
        recovery(0.5, baseline=0.4, topline=0.4)


def test_v_measure_worked_example():
    # Classes a a b b, clusters 0 0 0 1 (entropies in bits):
    # homogeneity = 1 - H(C|K)/H(C) = 1 - (3/4 * H(2/3, 1/3)) / 1 = 1 - 0.75 * 0.918296 = 0.311278
    # completeness = 1 - H(K|C)/H(K) = 1 - (1/2 * 1) / H(3/4, 1/4) = 1 - 0.5 / 0.811278 = 0.383689
    # V = 2hc / (h + c) = 0.343711
    assert v_measure(["a", "a", "b", "b"], [0, 0, 0, 1]) == pytest.approx(0.343711, abs=1e-6)
    assert v_measure(["a", "a", "b", "b"], [5, 5, 2, 2]) == pytest.approx(1.0)


def test_v_measure_of_one_cluster():
    # One cluster holding two classes: complete but not homogeneous at all -> 0.
    assert v_measure(["a", "a", "b", "b"], [0, 0, 0, 0]) == pytest.approx(0.0)
    # One cluster, one class: perfect.
    assert v_measure(["a", "a"], [0, 0]) == pytest.approx(1.0)


def test_propagated_label_quality_worked_example():
    truth = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], dtype=bool)
    given = np.array([[1, 0], [1, 0], [0, 0], [0, 1]], dtype=bool)
    # Correct cells: (0,0) and (3,1) = 2; given cells 3; true cells 4.
    precision, recall = propagated_label_quality(truth, given)
    assert precision == pytest.approx(2 / 3)
    assert recall == pytest.approx(1 / 2)


def test_propagated_label_quality_when_nothing_was_propagated():
    truth = np.eye(2, dtype=bool)
    precision, recall = propagated_label_quality(truth, np.zeros((2, 2), dtype=bool))
    assert math.isnan(precision)
    assert recall == 0.0
    with pytest.raises(UserError):
        propagated_label_quality(np.zeros((2, 2), dtype=bool), truth)


# ---------------------------------------------------------------------------------------------
# Shallow classifier


def _blobs(rng: np.random.Generator, per_class: int) -> tuple[np.ndarray, list[list[str]]]:
    centres = np.eye(3, 8) * 6.0
    classes = np.repeat(np.arange(3), per_class)
    embeddings = centres[classes] + rng.normal(size=(len(classes), 8))
    return embeddings, [[f"class{c}"] for c in classes]


def test_shallow_classifier_learns_separable_classes():
    rng = np.random.default_rng(0)
    train_x, train_y = _blobs(rng, 30)
    test_x, test_y = _blobs(rng, 15)
    score = shallow_classifier_map(train_x, train_y, test_x, test_y, epochs=100)
    assert score > 0.95


def test_shallow_classifier_on_unrelated_labels_is_near_chance():
    rng = np.random.default_rng(0)
    train_x, _ = _blobs(rng, 40)
    test_x, _ = _blobs(rng, 40)
    # Labels drawn independently of the embeddings: each class holds about 1/3 of the test set,
    # which is the AP of an uninformative ranking.
    train_y = np.eye(3, dtype=bool)[rng.integers(0, 3, len(train_x))]
    test_y = np.eye(3, dtype=bool)[rng.integers(0, 3, len(test_x))]
    score = shallow_classifier_map(train_x, train_y, test_x, test_y, epochs=100)
    assert score < 0.6


def test_shallow_classifier_multi_label():
    rng = np.random.default_rng(1)
    # Two independent binary attributes, each carried by one embedding coordinate.
    attributes = rng.integers(0, 2, size=(160, 2)).astype(bool)
    embeddings = np.concatenate(
        [attributes * 4.0 + rng.normal(size=(160, 2)), rng.normal(size=(160, 4))], axis=1
    )
    score = shallow_classifier_map(
        embeddings[:100], attributes[:100], embeddings[100:], attributes[100:], epochs=100
    )
    assert score > 0.9
