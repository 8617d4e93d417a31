"""Search, then label: hits become yes/no questions in a search session, their answers merge
with cluster labels into the classifier's training set (partial labels), and the labeling
page serves the question and the stopping signal."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from starlette.testclient import TestClient
from typer.testing import CliRunner

from coincide.classifier.train import TrainingSet
from coincide.cli.commands import app
from coincide.labeling.search_label import (
    add_hits,
    merge_search_labels,
    search_answers,
    search_sessions,
    session_name,
)
from coincide.labelui import server
from coincide.labelui.app import create_app
from coincide.labelui.vocab import Vocabulary
from coincide.store.features import open_store
from coincide.store.labels import InMemoryLabelStore
from coincide.store.labels_sqlite import SQLiteLabelStore

sys.path.insert(0, str(Path(__file__).parent))
from inference_helpers import TinyRun, make_tiny_run  # noqa: E402
from test_labelui_api import BASE, build_labeling_run, claim, give, write_media  # noqa: E402

torch.set_num_threads(1)


def test_merge_search_labels_by_hand():
    cluster = TrainingSet(np.array([1, 2, 3]), [["cat"], ["dog"], ["dog"]])
    answers = {2: {"dog": False}, 3: {"bird": True}, 7: {"dog": True}, 8: {"cat": False}}
    merged = merge_search_labels(cluster, answers)
    assert merged.windows.tolist() == [1, 2, 3, 7, 8]
    assert merged.labels == [["cat"], [], ["bird", "dog"], ["dog"], []]
    assert merged.negatives == [[], ["dog"], [], [], ["cat"]]
    # Window 1 keeps its closed cluster label; 2 lost its only label, 7 and 8 were only searched.
    assert merged.closed.tolist() == [True, False, True, False, False]
    assert merged.groups is None
    grouped = TrainingSet(cluster.windows, cluster.labels, groups=np.array([4, 5, 5]))
    # Validation groups: the answered clusters, and a group of its own for a searched window.
    assert merge_search_labels(grouped, answers).groups.tolist() == [4, 5, 5, -8, -9]


def test_search_answers_latest_wins_and_unsure_says_nothing():
    now = [1000.0]
    labels = InMemoryLabelStore(clock=lambda: now[0])

    class Store:
        root = Path("/tmp/store")

        def __len__(self):
            return 10

    one = add_hits(labels, Path("/r"), Store(), "dog", "a.wav@1", {"m": 1}, [4, 5, 6])
    two = add_hits(labels, Path("/r"), Store(), "dog", "b.wav@2", {"m": 1}, [4])
    assert one.name == session_name("dog", "a.wav@1") != two.name
    labels.answer(one.id, 4, 4, ["dog"], "label", "ann")
    labels.answer(one.id, 5, 5, [], "skip", "ann")
    labels.answer(one.id, 6, 6, ["dog"], "unsure", "ann")
    now[0] = 2000.0
    labels.answer(two.id, 4, 4, [], "skip", "bob")  # later: window 4 is not a dog after all
    sessions = search_sessions(labels, Store.root)
    assert [s.name for s in sessions] == [one.name, two.name]
    assert search_answers(labels, sessions) == {4: {"dog": False}, 5: {"dog": False}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> TinyRun:
    return make_tiny_run(tmp_path_factory.mktemp("search_label"), finetune=False)


def test_search_label_then_finetune_with_cluster_labels(tiny):
    store = open_store(tiny.store)
    runner = CliRunner()
    label = sorted({c for x in store.index["labels"] for c in x})[0]
    result = runner.invoke(
        app,
        ["search", str(tiny.run), "--store", str(tiny.store), "--query-window", "0"]
        + ["--top", "6", "--label-as", label, "--oracle", "store"],
    )
    assert result.exit_code == 0, result.output
    with SQLiteLabelStore(tiny.run / "labels.sqlite") as labels:
        (session,) = search_sessions(labels, tiny.store)
        assert session.params["class"] == label and session.params["query"] == "store window 0"
        assert "model" in session.params  # provenance: what found the hits
        answers = labels.answers(session.id)
    assert len(answers) == 6
    truth = [list(x) for x in store.index["labels"]]
    for answer in answers:
        holds = label in truth[answer.window_index]
        assert (answer.kind, list(answer.labels)) == (("label", [label]) if holds else ("skip", []))
    assert f"{sum(a.kind == 'label' for a in answers)} yes" in result.output

    # Cluster labels (k-means) plus the search answers feed one fine-tuning.
    commands = [
        ["cluster", str(tiny.run), "--store", str(tiny.store), "--method", "kmeans", "--k", "3"],
        ["label", str(tiny.run), "--store", str(tiny.store), "--budget", "2", "--oracle", "store"]
        + ["--method", "kmeans", "--k", "3"],
        ["finetune", str(tiny.run), "--store", str(tiny.store), "--session", "cluster-kmeans-3"]
        + ["--with-search", "--steps", "2", "--batch-size", "4", "--test-store", str(tiny.store)],
    ]
    for command in commands:
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
    metrics = json.loads(
        (tiny.run / "finetune" / "cluster-cluster-kmeans-3-search" / "metrics.json").read_text()
    )
    assert metrics["search_sessions"] == [session.name]
    settings = metrics["settings"]
    assert settings["search_sessions"] == [session.name]
    propagated = pd.read_parquet(tiny.run / "labels/cluster-kmeans-3/propagated.parquet")
    # Every window of the cluster labels and of the search answers (yes or no) is trained on.
    union = set(propagated["window_index"]) | {a.window_index for a in answers}
    assert metrics["labeled_windows"] == len(union)


def test_finetune_with_search_needs_a_search_session(tmp_path):
    tiny_run = tmp_path / "run"
    tiny_run.mkdir()
    result = CliRunner().invoke(
        app,
        ["finetune", str(tiny_run), "--store", str(tmp_path), "--strategy", "all"]
        + ["--with-search"],
    )
    assert result.exit_code != 0


@pytest.fixture(scope="module")
def labeling(tmp_path_factory):
    root = tmp_path_factory.mktemp("extras")
    return build_labeling_run(root, write_media(root / "sources"))


def test_page_serves_the_stopping_signal_of_a_cluster_session(labeling):
    opened = server.open_campaign(labeling.run, labeling.store, budget=5)
    client = TestClient(
        create_app(opened.campaign, Vocabulary(), allowed_hosts=server.LOOPBACK_NAMES),
        base_url=BASE,
    )
    try:
        assert client.get("/static/extra.js").status_code == 200
        assert '<script src="/static/extra.js" defer>' in client.get("/").text
        before = client.get("/api/extra").json()
        assert before["strategy"] == "cluster" and before["signal"]["coverage"] == 0.0
        request = claim(client, "tab-a")
        assert give(client, "tab-a", request, labels=("dog",)).status_code == 200
        after = client.get("/api/extra").json()["signal"]
        size = int((opened.campaign.assignment == request["cluster_id"]).sum())
        assert after["labeled_windows"] == size and after["answered"] == 1
        assert after["precision"] is None and "coverage" in after["text"]
    finally:
        opened.labels.close()


def test_page_asks_the_question_of_a_search_session(labeling, tmp_path):
    db = tmp_path / "labels.sqlite"
    store = open_store(labeling.store)
    with SQLiteLabelStore(db) as labels:
        add_hits(labels, labeling.run, store, "tone", "tone.wav@1", {"m": 1}, [6, 7, 8], "s")
    opened = server.open_campaign(labeling.run, labeling.store, session="s", db_path=db)
    client = TestClient(
        create_app(opened.campaign, Vocabulary(), allowed_hosts=server.LOOPBACK_NAMES),
        base_url=BASE,
    )
    try:
        info = client.get("/api/extra").json()
        assert info == {"strategy": "search", "question": "tone", "query": "tone.wav@1"}
        request = claim(client, "tab-b")
        assert request["window"] == 6 and request["cluster_size"] == 1
        assert give(client, "tab-b", request, kind="skip", labels=()).status_code == 200
    finally:
        opened.labels.close()
    with SQLiteLabelStore(db) as labels:
        sessions = search_sessions(labels, labeling.store)
        assert search_answers(labels, sessions) == {6: {"tone": False}}
