"""Clustering every window: streaming embedding, arg-max assignment, k-means, the outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from coincide.errors import UserError
from coincide.evaluation.metrics import v_measure
from coincide.labeling.clusters import (
    ClusteringKey,
    ClusterMembers,
    cluster_sizes,
    load_clustering,
    size_histogram,
    summarize,
)
from coincide.models.embed_store import assign_windows, embed_windows
from coincide.stages import cluster as cluster_stage
from coincide.stages.cluster import ClusterSettings, ensure_clustering, kmeans_assign
from coincide.store.features import open_store
from coincide.train.checkpoint import load_models

sys.path.insert(0, str(Path(__file__).parent))
from consolidation_helpers import balanced_clips, make_run, make_store  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    store = make_store(root / "train", balanced_clips(["a", "b", "c", "d"], 10), windows_per_clip=5)
    make_run(root / "run", num_clusters=8, centres_from=store)
    return root, store


def test_sizes_histogram_and_summary_on_a_hand_made_assignment():
    assignment = np.array([0, 0, 0, 1, 3, 3, 3, 3, 3, 3, 3, 3])
    sizes = cluster_sizes(assignment, 5)
    assert sizes.tolist() == [3, 1, 0, 8, 0]
    assert size_histogram(sizes) == {"1": 1, "2-3": 1, "4-7": 0, "8-15": 1}
    summary = summarize(assignment, 5)
    assert (summary["K"], summary["active_clusters"], summary["largest_cluster"]) == (5, 3, 8)
    assert summary["median_cluster"] == 3.0


def test_cluster_members_groups_windows_by_cluster():
    members = ClusterMembers(np.array([2, 0, 2, 2, 5, 0]))
    assert members.active.tolist() == [0, 2, 5]
    assert members.members(2).tolist() == [0, 2, 3]
    assert members.members(0).tolist() == [1, 5]
    assert members.members(1).tolist() == []
    assert members.size(5) == 1 and members.size(4) == 0


def test_streaming_matches_one_big_forward_pass(workspace, tmp_path):
    root, store_root = workspace
    store = open_store(store_root)
    models = load_models(root / "run/checkpoints/last.pt")
    encoder, head = models["audio"], models["cluster_head"]
    with torch.no_grad():
        inputs = torch.from_numpy(store.logmel[:]).unsqueeze(1)
        expected = encoder(inputs)
        expected_clusters = head(expected).argmax(1).numpy()

    # A batch size that does not divide the store exercises the last, short batch. The pass
    # runs in eval mode (BatchNorm running statistics) and gives the mode back afterwards.
    encoder.train()
    embeddings = embed_windows(encoder, store, batch_size=7, device=torch.device("cpu"))
    np.testing.assert_allclose(embeddings, expected.numpy(), rtol=1e-4, atol=1e-5)
    out = tmp_path / "emb.npy"
    assignment = assign_windows(
        encoder, head, store, batch_size=13, device=torch.device("cpu"), embeddings_out=out
    )
    assert assignment.tolist() == expected_clusters.tolist()
    np.testing.assert_allclose(np.load(out), expected.numpy(), rtol=1e-4, atol=1e-5)
    assert encoder.training


def test_cluster_command_writes_assignment_sizes_summary_and_plot(workspace, capsys):
    root, store = workspace
    clustering = cluster_stage.run(cluster_stage.ClusterSettings(root / "run", store))
    folder = root / "run/clusters/train"
    assert clustering.folder == folder
    assignment = np.load(folder / "assignment.npy")
    assert assignment.shape == (200,) and assignment.min() >= 0 and assignment.max() < 8
    sizes = np.loadtxt(folder / "sizes.csv", delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    assert sizes[:, 1].sum() == 200
    assert sorted(sizes[:, 0].tolist()) == np.unique(assignment).tolist()
    assert (np.diff(sizes[:, 1]) <= 0).all()  # largest first
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["K"] == 8 and summary["active_clusters"] == len(np.unique(assignment))
    assert summary["active_clusters"] > 1  # centres on several classes spread the windows
    assert (folder / "sizes.png").stat().st_size > 0
    assert np.load(folder / "embeddings.npy").shape == (200, 16)
    assert "active clusters" in capsys.readouterr().out


def test_kmeans_recovers_well_separated_groups():
    rng = np.random.default_rng(0)
    directions = np.eye(4)[:, :4] * 10
    truth = np.repeat(np.arange(4), 30)
    embeddings = directions[truth] + rng.normal(0, 0.3, (120, 4))
    assignment = kmeans_assign(embeddings.astype(np.float32), 4, seed=0)
    assert v_measure(truth, assignment) == pytest.approx(1.0)


def test_kmeans_command_and_reuse(workspace):
    root, store_root = workspace
    store = open_store(store_root)
    clustering = cluster_stage.run(
        cluster_stage.ClusterSettings(root / "run", store_root, method="kmeans", k=5)
    )
    assert clustering.folder == root / "run/clusters/train/kmeans-5"
    assert clustering.num_clusters == 5 and clustering.active == 5
    record = json.loads((clustering.folder / "settings.json").read_text())
    assert record["command"] == "cluster"
    assert record["settings"]["method"] == "kmeans" and record["settings"]["k"] == 5
    assert record["settings"]["store"] == str(store_root.absolute())
    loaded = load_clustering(root / "run", store_root, ClusteringKey("kmeans", 5))
    assert loaded.assignment.tolist() == clustering.assignment.tolist()

    stamp = (clustering.folder / "assignment.npy").stat().st_mtime_ns
    again = ensure_clustering(ClusterSettings(root / "run", store_root, "kmeans", 5), store)
    assert (clustering.folder / "assignment.npy").stat().st_mtime_ns == stamp
    assert again.assignment.tolist() == clustering.assignment.tolist()


def test_user_errors(workspace, tmp_path):
    root, store = workspace
    make_run(tmp_path / "no_head", cluster_head=False)
    with pytest.raises(UserError, match="no cluster head"):
        cluster_stage.run(cluster_stage.ClusterSettings(tmp_path / "no_head", store))
    with pytest.raises(UserError, match="--clusters"):
        cluster_stage.run(cluster_stage.ClusterSettings(root / "run", store, method="kmeans"))
    with pytest.raises(UserError, match="K <= 200"):
        cluster_stage.run(
            cluster_stage.ClusterSettings(root / "run", store, method="kmeans", k=1000)
        )
    with pytest.raises(UserError, match="coincide cluster"):
        load_clustering(root / "run", store, ClusteringKey("kmeans", 77))
