"""Cluster-based labeling: selection, sessions that extend, the oracle, propagation, quality."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from coincide.errors import UserError
from coincide.labeling.clusters import Clustering, ClusterMembers
from coincide.labeling.oracle import WindowLabelOracle, answer_with_oracle, oracle_window_labels
from coincide.labeling.select import (
    cluster_order,
    pick_member,
    random_window_requests,
    select_requests,
)
from coincide.labeling.sessions import (
    SessionPlan,
    cluster_plan,
    extend_session,
    label_quality,
    open_session,
    propagate_answers,
    session_labels,
)
from coincide.stages import cluster as cluster_stage
from coincide.stages import label as label_stage
from coincide.store.features import open_store
from coincide.store.labels import InMemoryLabelStore
from coincide.store.labels_sqlite import SQLiteLabelStore

sys.path.insert(0, str(Path(__file__).parent))
from consolidation_helpers import balanced_clips, make_run, make_store  # noqa: E402

torch.set_num_threads(1)

# A hand-made clustering of 10 windows into K = 6 clusters (clusters 3 and 5 are empty).
ASSIGNMENT = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 4])
TRUTH = [["dog"], ["dog"], ["cat"], ["car"], ["car"], ["dog"], ["dog"], ["dog"], ["bird"], []]


def _clustering(assignment: np.ndarray = ASSIGNMENT, k: int = 6) -> Clustering:
    return Clustering(Path("unused"), "head", assignment, k, {})


class _FakeStore:
    """Just what `open_session` reads of a feature store."""

    root = Path("/data/fake_store")


def _session(label_store, plan, name="s"):
    return open_session(label_store, name, Path("run"), _FakeStore(), plan)


# ---------------------------------------------------------------------------------------------
# Selection


def test_cluster_order_asks_every_active_cluster_once_and_never_an_empty_one():
    sizes = np.bincount(ASSIGNMENT, minlength=6)
    order = cluster_order(sizes, "random", seed=3)
    assert sorted(order.tolist()) == [0, 1, 2, 4]
    assert order.tolist() == cluster_order(sizes, "random", seed=3).tolist()
    orders = {tuple(cluster_order(sizes, "random", seed=s).tolist()) for s in range(10)}
    assert len(orders) > 1  # the seed matters


def test_cluster_order_by_size_is_largest_first():
    sizes = np.bincount(ASSIGNMENT, minlength=6)  # [3, 2, 4, 0, 1, 0]
    assert cluster_order(sizes, "size", seed=0).tolist() == [2, 0, 1, 4]


def test_select_requests_picks_n_distinct_clusters_and_a_member_of_each():
    assignment = np.random.default_rng(0).integers(0, 50, size=400)
    requests = select_requests(assignment, 60, budget=20, seed=7)
    clusters = [c for c, _ in requests]
    assert len(requests) == 20 and len(set(clusters)) == 20
    for cluster_id, window in requests:
        assert assignment[window] == cluster_id
    assert requests == select_requests(assignment, 60, budget=20, seed=7)
    assert requests != select_requests(assignment, 60, budget=20, seed=8)
    # A larger budget extends the same list.
    assert select_requests(assignment, 60, budget=30, seed=7)[:20] == requests


def test_select_requests_is_capped_by_the_active_clusters():
    assert len(select_requests(ASSIGNMENT, 6, budget=100)) == 4


def test_medoid_is_the_member_closest_to_the_cluster_mean():
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [5.0, 5.0], [1.0, 0.1]])
    # Unit vectors of members 0, 1, 2: mean direction is the diagonal, which member 2 is on.
    assert pick_member(np.array([0, 1, 2]), 0, "medoid", embeddings=embeddings) == 2
    assert pick_member(np.array([0, 4, 1]), 0, "medoid", embeddings=embeddings) == 4


def test_random_member_depends_on_seed_and_cluster_only():
    members = np.arange(100)
    first = pick_member(members, 5, "random", seed=1)
    assert first == pick_member(members, 5, "random", seed=1)
    assert {pick_member(members, c, "random", seed=1) for c in range(20)} != {first}


def test_random_baseline_labels_exactly_n_distinct_windows():
    requests = random_window_requests(1000, 37, seed=2)
    windows = [w for _, w in requests]
    assert len(set(windows)) == 37
    assert all(c == w for c, w in requests)
    assert random_window_requests(1000, 50, seed=2)[:37] == requests


# ---------------------------------------------------------------------------------------------
# Sessions and the oracle


def test_extending_the_budget_reuses_earlier_answers():
    label_store = InMemoryLabelStore()
    clustering = _clustering()
    session = _session(label_store, cluster_plan(clustering, seed=5))
    oracle = WindowLabelOracle(TRUTH)
    first = extend_session(label_store, session, 2, clustering)
    assert answer_with_oracle(label_store, session, first, oracle) == 2
    assert oracle.calls == 2
    answers_before = label_store.answers(session.id)

    longer = extend_session(label_store, session, 4, clustering)
    assert [(r.cluster_id, r.window_index) for r in longer[:2]] == [
        (r.cluster_id, r.window_index) for r in first
    ]
    assert answer_with_oracle(label_store, session, longer, oracle) == 2
    assert oracle.calls == 4  # only the two new clusters were asked
    assert label_store.answers(session.id)[:2] == answers_before
    assert label_store.progress(session.id) == (4, 4)


def test_a_session_cannot_be_extended_with_another_plan():
    label_store = InMemoryLabelStore()
    clustering = _clustering()
    _session(label_store, cluster_plan(clustering, seed=1))
    with pytest.raises(UserError, match="seed"):
        _session(label_store, cluster_plan(clustering, seed=2))
    reclustered = _clustering(np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 4]))
    with pytest.raises(UserError, match="clustering changed"):
        _session(label_store, cluster_plan(reclustered, seed=1))


def test_answers_committed_before_a_crash_are_kept_and_not_asked_again(tmp_path):
    clustering = _clustering()

    class CrashingOracle(WindowLabelOracle):
        def __call__(self, window_index):
            if self.calls == 2:
                raise KeyboardInterrupt  # the process dies while the third question is asked
            return super().__call__(window_index)

    with SQLiteLabelStore(tmp_path / "labels.sqlite") as label_store:
        session = _session(label_store, cluster_plan(clustering, seed=0))
        requests = extend_session(label_store, session, 4, clustering)
        with pytest.raises(KeyboardInterrupt):
            answer_with_oracle(label_store, session, requests, CrashingOracle(TRUTH))

    with SQLiteLabelStore(tmp_path / "labels.sqlite") as label_store:
        session = label_store.get_session("s")
        assert label_store.progress(session.id) == (2, 4)
        oracle = WindowLabelOracle(TRUTH)
        requests = extend_session(label_store, session, 4, clustering)
        assert answer_with_oracle(label_store, session, requests, oracle) == 2
        assert oracle.calls == 2
        assert label_store.progress(session.id) == (4, 4)


def test_a_window_without_labels_is_answered_skip():
    label_store = InMemoryLabelStore()
    session = _session(label_store, SessionPlan(strategy="random", seed=0, windows=10))
    label_store.add_requests(session.id, [(9, 9), (0, 0)])
    answer_with_oracle(
        label_store, session, label_store.requests(session.id), WindowLabelOracle(TRUTH)
    )
    kinds = {a.window_index: (a.kind, a.labels) for a in label_store.answers(session.id)}
    assert kinds == {9: ("skip", ()), 0: ("label", ("dog",))}


# ---------------------------------------------------------------------------------------------
# Propagation and label quality


def test_propagation_gives_every_window_of_a_labeled_cluster_the_answer():
    label_store = InMemoryLabelStore()
    clustering = _clustering()
    session = _session(label_store, cluster_plan(clustering))
    label_store.add_requests(session.id, [(0, 2), (2, 5), (1, 3), (4, 9)])
    label_store.answer(session.id, 0, 2, ["cat"], "label", "ann")
    label_store.answer(session.id, 2, 5, ["dog"], "label", "ann")
    label_store.answer(session.id, 1, 3, ["car"], "unsure", "ann")  # not confident: not used
    label_store.answer(session.id, 4, 9, [], "skip", "ann")
    propagated = session_labels(label_store, session, members=ClusterMembers(ASSIGNMENT))
    assert propagated["window_index"].tolist() == [0, 1, 2, 5, 6, 7, 8]
    assert propagated["labels"].tolist() == [["cat"]] * 3 + [["dog"]] * 4
    assert propagated["cluster_id"].tolist() == [0, 0, 0, 2, 2, 2, 2]

    # Only the first budget's requests count.
    first = session_labels(label_store, session, budget=1, members=ClusterMembers(ASSIGNMENT))
    assert first["window_index"].tolist() == [0, 1, 2]


def test_label_precision_and_recall_on_a_hand_made_example():
    # Cluster 0 labeled "cat" (from window 2): windows 0, 1 are dogs, window 2 a cat.
    # Cluster 2 labeled "dog" (from window 5): windows 5, 6, 7 dogs, window 8 a bird.
    propagated = pd.DataFrame(
        {
            "window_index": [0, 1, 2, 5, 6, 7, 8],
            "labels": [["cat"]] * 3 + [["dog"]] * 4,
            "cluster_id": [0, 0, 0, 2, 2, 2, 2],
        }
    )
    precision, recall = label_quality(propagated, TRUTH)
    # Correct: window 2 (cat), windows 5, 6, 7 (dog) = 4 of 7 given; 9 true labels in all.
    assert precision == pytest.approx(4 / 7)
    assert recall == pytest.approx(4 / 9)


def test_random_session_labels_only_the_asked_windows():
    label_store = InMemoryLabelStore()
    session = _session(label_store, SessionPlan(strategy="random", seed=4, windows=10))
    requests = extend_session(label_store, session, 3)
    answer_with_oracle(label_store, session, requests, WindowLabelOracle(TRUTH))
    propagated = session_labels(label_store, session)
    asked = sorted(r.window_index for r in requests if TRUTH[r.window_index])
    assert propagated["window_index"].tolist() == asked
    assert propagated["labels"].tolist() == [TRUTH[w] for w in asked]


def test_propagate_nothing_gives_an_empty_table():
    empty = propagate_answers([], ClusterMembers(ASSIGNMENT))
    assert len(empty) == 0 and list(empty.columns) == ["window_index", "labels", "cluster_id"]


# ---------------------------------------------------------------------------------------------
# Oracle sources and the command


def test_oracle_from_a_csv_matches_media_paths(tmp_path):
    store_root = make_store(tmp_path / "store", [["a"], ["b"], []], windows_per_clip=2)
    store = open_store(store_root)
    media = tmp_path / "media"
    csv = tmp_path / "oracle.csv"
    csv.write_text(
        f"path,label\n{media / 'clip0001-store.wav'},x\n{media / 'clip0001-store.wav'},y\n"
        f"{media / 'clip0002-store.wav'},z\n",
        encoding="utf-8",
    )
    assert oracle_window_labels(store, csv) == [[], [], ["x", "y"], ["x", "y"], ["z"], ["z"]]
    assert oracle_window_labels(store, "store") == [["a"], ["a"], ["b"], ["b"], [], []]
    (tmp_path / "other.csv").write_text("path,label\n/elsewhere.wav,x\n", encoding="utf-8")
    with pytest.raises(UserError, match="no path"):
        oracle_window_labels(store, tmp_path / "other.csv")


def test_label_command_writes_propagated_labels_and_extends_the_session(tmp_path, capsys):
    store = make_store(tmp_path / "train", balanced_clips(["a", "b", "c"], 8), windows_per_clip=4)
    make_run(tmp_path / "run")
    cluster_stage.run(cluster_stage.ClusterSettings(tmp_path / "run", store, method="kmeans", k=10))
    assignment = np.load(tmp_path / "run/clusters/train/kmeans-10/assignment.npy")

    first = label_stage.run(
        label_stage.LabelSettings(tmp_path / "run", store, 3, "store", method="kmeans", k=10)
    )
    assert first["session"] == "cluster-kmeans-10"
    assert (first["requests"], first["asked_now"]) == (3, 3)
    second = label_stage.run(
        label_stage.LabelSettings(tmp_path / "run", store, 5, "store", method="kmeans", k=10)
    )
    assert (second["requests"], second["asked_now"]) == (5, 2)
    record = json.loads((tmp_path / "run/labels/cluster-kmeans-10/settings.json").read_text())
    assert (record["command"], record["settings"]["budget"]) == ("label", 5)

    propagated = pd.read_parquet(tmp_path / "run/labels/cluster-kmeans-10/propagated.parquet")
    with SQLiteLabelStore(tmp_path / "run/labels.sqlite") as label_store:
        session = label_store.get_session("cluster-kmeans-10")
        answers = label_store.answers(session.id)
    assert [a.annotator for a in answers] == ["oracle"] * 5
    expected = np.sort(
        np.concatenate([np.flatnonzero(assignment == a.cluster_id) for a in answers])
    )
    assert propagated["window_index"].tolist() == expected.tolist()
    assert second["labeled_windows"] == len(expected)
    assert 0.0 < second["label_recall"] <= 1.0

    random = label_stage.run(
        label_stage.LabelSettings(tmp_path / "run", store, 7, "store", strategy="random")
    )
    assert random["session"] == "random" and random["labeled_windows"] == 7
    assert "wrote" in capsys.readouterr().out


def test_a_run_that_clusters_with_kmeans_by_default_labels_and_finetunes_it(tmp_path, capsys):
    """laptop-trained runs say `clustering.method: kmeans`: cluster, label and the default
    session then use k-means at the run's K, and the head stays one option away."""
    store = make_store(tmp_path / "train", balanced_clips(["a", "b", "c"], 8), windows_per_clip=4)
    run = tmp_path / "run"
    make_run(run, num_clusters=6)
    (run / "config.yaml").write_text("clustering: {K: 6, method: kmeans}\n", encoding="utf-8")

    made = cluster_stage.run(cluster_stage.ClusterSettings(run, store))
    assert made.name == "kmeans-6" and made.folder == run / "clusters/train/kmeans-6"
    assert "kmeans-6 (method kmeans" in capsys.readouterr().out
    assert (
        cluster_stage.run(cluster_stage.ClusterSettings(run, store, method="kmeans")).name
        == "kmeans-6"
    )  # the run's K
    assert (
        cluster_stage.run(cluster_stage.ClusterSettings(run, store, method="head")).name == "head"
    )

    default = label_stage.run(label_stage.LabelSettings(run, store, 3, "store"))
    assert default["session"] == "cluster" and default["clustering"] == "kmeans-6"
    head = label_stage.run(label_stage.LabelSettings(run, store, 3, "store", method="head"))
    assert head["session"] == "cluster-head"

    # A run whose config predates the key (or has none) keeps the head.
    (run / "config.yaml").write_text("clustering: {K: 6}\n", encoding="utf-8")
    assert cluster_stage.run_clustering(run) == ("head", None)
    (run / "config.yaml").unlink()
    assert cluster_stage.resolve_method(run, None, 4) == ("kmeans", 4)
