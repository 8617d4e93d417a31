"""Queries beyond the paper: the typical member, size x uncertainty order, check requests, and
the stopping signal's precision and coverage estimate; the head's confidence and a head trained
longer on frozen f."""

from __future__ import annotations

import json
import math
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from coincide.cli.commands import app
from coincide.labeling.cluster_head import centroid_assign_confidence, head_assign, train_head
from coincide.labeling.clusters import ClusteringKey, ClusterMembers, load_clustering
from coincide.labeling.select import (
    check_id,
    cluster_order,
    cluster_uncertainty,
    is_check,
    pick_member,
    select_requests,
)
from coincide.labeling.sessions import propagate_answers
from coincide.labeling.signal import estimate
from coincide.models.heads import ClusterHead
from coincide.store.labels import Answer, Request

sys.path.insert(0, str(Path(__file__).parent))
from consolidation_helpers import balanced_clips, make_run, make_store  # noqa: E402

torch.set_num_threads(1)


def test_size_uncertainty_order_and_cluster_uncertainty_by_hand():
    assignment = np.array([0, 0, 0, 1, 2, 2])
    confidence = np.array([0.9, 0.9, 0.9, 0.1, 0.5, 0.5])
    uncertainty = cluster_uncertainty(assignment, confidence, 4)
    np.testing.assert_allclose(uncertainty, [0.1, 0.9, 0.5, 0.0])
    # size x uncertainty: 0.3, 0.9, 1.0 (cluster 3 is empty, never asked).
    order = cluster_order(np.array([3, 1, 2, 0]), "size-uncertainty", 0, uncertainty)
    assert order.tolist() == [2, 1, 0]


def test_typical_member_has_the_highest_probability():
    confidence = np.array([0.2, 0.7, 0.9, 0.4, 0.95])
    assert pick_member(np.array([0, 1, 3]), 0, "typical", confidence=confidence) == 1
    assert pick_member(np.array([2, 4]), 1, "typical", confidence=confidence) == 4


def test_checks_ask_another_member_of_an_earlier_cluster_and_extend_as_a_prefix():
    assignment = np.repeat(np.arange(6), [5, 4, 1, 3, 6, 2])
    members = ClusterMembers(assignment)
    requests = select_requests(assignment, 6, 9, seed=3, check_every=2)
    clusters = [c for c, _ in requests if not is_check(c)]
    checks = [(c, w) for c, w in requests if is_check(c)]
    assert len(requests) == 9 and len(checks) == 3  # after clusters 2, 4 and 6
    assert [is_check(c) for c, _ in requests][:3] == [False, False, True]
    shown = {w for c, w in requests if not is_check(c)}
    for position, (cluster_id, window) in enumerate(requests):
        if not is_check(cluster_id):
            continue
        assert cluster_id == check_id(window) and window not in shown
        earlier = [c for c, _ in requests[:position] if not is_check(c)]
        assert int(assignment[window]) in earlier and members.size(assignment[window]) >= 2
    assert len(set(clusters)) == len(clusters)
    assert select_requests(assignment, 6, 5, seed=3, check_every=2) == requests[:5]


def _answer(cluster_id: int, window: int, labels: list[str], kind: str = "label") -> Answer:
    at = datetime.fromtimestamp(0, UTC)
    return Answer(0, 1, cluster_id, window, tuple(labels), kind, "a", at, False)  # type: ignore[arg-type]


def test_a_check_answer_wins_over_the_cluster_label_on_its_window():
    members = ClusterMembers(np.array([0, 0, 0, 1]))
    answers = [
        _answer(0, 0, ["dog"]),
        _answer(check_id(1), 1, ["cat"]),
        _answer(check_id(2), 2, [], "skip"),
    ]
    frame = propagate_answers(answers, members)
    assert frame["window_index"].tolist() == [0, 1]
    assert frame["labels"].tolist() == [["dog"], ["cat"]]


def test_signal_precision_and_coverage_by_hand():
    # Cluster 0 (windows 0-3) answered dog, cluster 1 (window 4) cat, cluster 2 (5-9) pending.
    assignment = np.array([0, 0, 0, 0, 1, 2, 2, 2, 2, 2])
    members = ClusterMembers(assignment)
    requests = [
        Request(1, p, c, w, "answered", None, None)
        for p, (c, w) in enumerate([(0, 0), (1, 4), (check_id(1), 1), (check_id(2), 2), (2, 5)])
    ]
    answers = [
        _answer(0, 0, ["dog"]),
        _answer(1, 4, ["cat"]),
        _answer(check_id(1), 1, ["dog"]),  # agrees
        _answer(check_id(2), 2, ["cat"]),  # disagrees
    ]
    signal = estimate(requests, answers, members, 10, lookahead=10)
    assert signal.labeled_windows == 5 and signal.coverage == pytest.approx(0.5)
    assert signal.checks == 2
    # One window of one-member clusters (right) and four checked at 1/2: (1 + 4 * 0.5) / 5.
    assert signal.precision == pytest.approx(0.6)
    assert signal.precision_error == pytest.approx(0.8 * math.sqrt(0.25 / 2))
    assert signal.next_gain == pytest.approx(0.5)  # cluster 2, five windows, still to ask
    assert "estimated label precision 0.60" in signal.describe()
    without = estimate(requests[:2], answers[:2], members, 10)
    assert without.precision is None and "unknown" in without.describe()


def test_signal_estimate_is_close_to_the_true_precision_with_the_oracle():
    rng = np.random.default_rng(0)
    sizes = rng.integers(2, 30, size=40)
    assignment = np.repeat(np.arange(40), sizes)
    # Each cluster is pure up to a share of windows of another class.
    purity = rng.uniform(0.4, 1.0, size=40)
    truth = ["a" if rng.random() < purity[c] else "b" for c in assignment]  # cluster label is "a"
    members = ClusterMembers(assignment)
    requests = select_requests(assignment, 40, 120, seed=1, check_every=1)
    answers = []
    for cluster_id, window in requests:
        # The annotator answers what the shown window holds; a cluster is asked through it.
        answers.append(_answer(cluster_id, window, [truth[window]]))
    rows = [Request(1, p, c, w, "answered", None, None) for p, (c, w) in enumerate(requests)]
    signal = estimate(rows, answers, members, len(assignment))
    propagated = propagate_answers(answers, members)
    right = sum(
        truth[w] in labels
        for w, labels in zip(propagated["window_index"], propagated["labels"], strict=True)
    )
    true_precision = right / len(propagated)
    assert signal.checks == 40  # one after each of the 40 clusters
    assert abs(signal.precision - true_precision) < 3 * signal.precision_error + 0.03


def test_head_assign_and_centroid_confidence_by_hand():
    head = ClusterHead(embed_dim=2, num_clusters=2, scale=1.0)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    embeddings = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]], dtype=np.float32)
    assignment, confidence = head_assign(head, embeddings)
    assert assignment[:2].tolist() == [0, 1]
    assert confidence[0] == pytest.approx(math.exp(1) / (math.exp(1) + 1))
    assert confidence[2] == pytest.approx(0.5)
    # k-means centres: the normalised means of the members' unit vectors, here the axes.
    centroid = centroid_assign_confidence(embeddings[:2], np.array([0, 1]), 2, scale=1.0)
    np.testing.assert_allclose(centroid, [math.exp(1) / (math.exp(1) + 1)] * 2, rtol=1e-6)


def test_training_the_head_on_frozen_embeddings_lowers_the_clustering_loss():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8))
    embeddings = (centres[rng.integers(4, size=400)] + 0.1 * rng.normal(size=(400, 8))).astype(
        np.float32
    )
    torch.manual_seed(0)
    head = ClusterHead(embed_dim=8, num_clusters=6)
    losses = []
    train_head(
        head,
        embeddings,
        60,
        gamma=1.1,
        lr=1e-2,
        batch_size=128,
        on_step=lambda s, v: losses.append(v),
    )
    assert len(losses) == 60 and np.mean(losses[-10:]) < np.mean(losses[:10])
    assignment, _ = head_assign(head, embeddings)
    assert len(np.unique(assignment)) >= 3


def test_cluster_head_steps_command_writes_its_own_clustering(tmp_path, capsys):
    store = make_store(tmp_path / "train", balanced_clips(["a", "b", "c"], 6), windows_per_clip=4)
    make_run(tmp_path / "run", num_clusters=6, centres_from=store)
    runner = CliRunner()
    result = runner.invoke(
        app, ["cluster", str(tmp_path / "run"), "--store", str(store), "--head-steps", "5"]
    )
    assert result.exit_code == 0, result.output
    assert "method head" in result.output and "5 more steps" in result.output
    clustering = load_clustering(tmp_path / "run", store, ClusteringKey(head_steps=5))
    assert clustering.name == "head-steps-5" and clustering.folder.name == "head-steps-5"
    assert clustering.confidence is not None and clustering.confidence.shape == (72,)
    assert ((clustering.confidence > 0) & (clustering.confidence <= 1)).all()
    summary = json.loads((clustering.folder / "summary.json").read_text())
    assert summary["method"] == "head" and summary["head_steps"] == 5
    result = runner.invoke(
        app,
        ["cluster", str(tmp_path / "run"), "--store", str(store), "--method", "kmeans"]
        + ["--k", "4", "--head-steps", "5"],
    )
    assert result.exit_code != 0 and "needs --method head" in str(result.exception)
    # Label the head trained longer, with checks, and see the signal printed.
    result = runner.invoke(
        app,
        ["label", str(tmp_path / "run"), "--store", str(store), "--budget", "6"]
        + ["--oracle", "store", "--head-steps", "5", "--checks", "2", "--member", "typical"]
        + ["--select", "size-uncertainty"],
    )
    assert result.exit_code == 0, result.output
    assert "coverage" in result.output and "estimated label precision" in result.output
