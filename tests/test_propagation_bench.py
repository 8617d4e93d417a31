"""benchmarks/propagation.py: which windows an answer reaches, how right they are, and the
frozen-f classifier that scores them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench_helpers import load_benchmark
from coincide.labeling.clusters import ClusterMembers

bench = load_benchmark("propagation")


def _two_clusters() -> tuple[ClusterMembers, np.ndarray]:
    # Cluster 0: windows 0-3 along x, nearer window 0 the lower the index; cluster 1: 4-5.
    angles = np.array([0.0, 0.1, 0.5, 1.2, 2.0, 2.1])
    embeddings = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return ClusterMembers(np.array([0, 0, 0, 0, 1, 1])), embeddings


def test_an_answer_reaches_its_window_the_nearest_part_or_the_whole_cluster() -> None:
    members, embeddings = _two_clusters()
    requests = [(0, 0), (1, 5)]
    only = bench.propagated(requests, members, embeddings, 0.0)
    assert [r.tolist() for r in only] == [[0], [5]]
    half = bench.propagated(requests, members, embeddings, 0.5)
    assert [sorted(r.tolist()) for r in half] == [[0, 1], [5]]  # round(0.5 x 2) = 1 of cluster 1
    whole = bench.propagated(requests, members, embeddings, None)
    assert [sorted(r.tolist()) for r in whole] == [[0, 1, 2, 3], [4, 5]]


def test_a_record_counts_right_labels_and_weighs_an_answer_as_one_window() -> None:
    members, embeddings = _two_clusters()
    truth = np.array(["a", "a", "b", "b", "b", "b"])
    reached = bench.propagated([(0, 0), (1, 5)], members, embeddings, None)
    seen: dict[str, np.ndarray | None] = {}

    def scorer(train: np.ndarray, labels: np.ndarray, weights: np.ndarray | None) -> float:
        seen["labels"], seen["weights"] = labels, weights
        return 0.5

    row = bench.record(Path("run"), "whole", 5, 0, reached, [0, 5], truth, embeddings, scorer)
    assert row["windows"] == 6 and row["clip_map"] == 0.5
    assert row["precision"] == 4 / 6  # windows 2 and 3 get cluster 0's answer "a"
    assert seen["weights"] is None
    bench.record(Path("run"), "w", 5, 0, reached, [0, 5], truth, embeddings, scorer, weighted=True)
    weights = seen["weights"]
    assert weights is not None
    # The asked window weighs 1 and the rest of its cluster 1 together, in either cluster.
    np.testing.assert_allclose(weights, [1, 1 / 3, 1 / 3, 1 / 3, 1, 1])


def test_the_scorer_gives_full_map_to_a_classifier_that_separates_the_clips() -> None:
    rng = np.random.default_rng(0)
    centres = {"dog": np.array([1.0, 0.0]), "cat": np.array([0.0, 1.0])}
    test_labels = np.repeat(["dog", "cat", "dog", "cat"], 3)  # four clips of three windows
    test = np.stack([centres[c] for c in test_labels]) + 0.05 * rng.normal(size=(12, 2))
    scorer = bench.Scorer(test, test_labels, np.repeat(["m0", "m1", "m2", "m3"], 3))
    train = np.stack([centres["dog"], centres["cat"]])
    assert scorer(train, np.array(["dog", "cat"])) == 1.0
    # One class only: no classifier can be fitted, every clip scores alike (mAP of ties).
    alike = scorer(train[:1], np.array(["dog"]))
    assert 0.0 < alike < 1.0
