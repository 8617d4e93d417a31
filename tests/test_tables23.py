"""Tables 2 and 3: label-efficiency arithmetic by hand, and both tables end to end (tiny)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from coincide.cli import app
from coincide.consolidation_tables import (
    budget_to_reach,
    label_efficiency,
    run_table2,
    run_table3,
    vm_over_single_label,
)
from coincide.finetune import FinetuneConfig

sys.path.insert(0, str(Path(__file__).parent))
from consolidation_helpers import balanced_clips, make_run, make_store  # noqa: E402

torch.set_num_threads(1)


def test_budget_to_reach_interpolates_in_log_budget():
    budgets, maps = [10, 100, 1000], [0.1, 0.3, 0.4]
    budget, bound = budget_to_reach(budgets, maps, 0.2)
    assert bound == "=" and budget == pytest.approx(math.sqrt(10 * 100))
    assert budget_to_reach(budgets, maps, 0.35)[0] == pytest.approx(10**2.5)
    assert budget_to_reach(budgets, maps, 0.3) == (100.0, "=")
    assert budget_to_reach(budgets, maps, 0.05) == (10.0, "<=")
    assert budget_to_reach(budgets, maps, 0.9) == (1000.0, ">")


def test_label_efficiency_ratios():
    rows = pd.DataFrame(
        {
            "strategy": ["random-scratch"] * 3 + ["cluster"] * 2,
            "budget": [10, 100, 1000, 10, 100],
            "mAP": [0.1, 0.3, 0.4, 0.3, 0.5],
        }
    )
    table = label_efficiency(rows, "random-scratch")
    assert table["budget"].tolist() == [10, 100]
    assert table["map_ratio"].tolist() == pytest.approx([3.0, 0.5 / 0.3])
    # Cluster reaches 0.3 with 10 labels; random needs 100: 10x fewer labels.
    assert table["budget_ratio"].iloc[0] == pytest.approx(10.0)
    assert table["bound"].tolist() == ["=", ">"]
    assert table["budget_ratio"].iloc[1] == pytest.approx(10.0)  # > 1000 / 100


def test_v_measure_over_single_label_windows():
    labels = [["a"], ["a"], ["b"], ["b"], ["a", "b"], []]
    perfect = np.array([0, 0, 1, 1, 5, 7])
    assert vm_over_single_label(labels, perfect) == (pytest.approx(1.0), 4)
    merged = np.array([0, 0, 0, 0, 0, 0])
    assert vm_over_single_label(labels, merged)[0] == pytest.approx(0.0)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    train = make_store(root / "train", balanced_clips(["a", "b", "c"], 8), windows_per_clip=4)
    test = make_store(root / "test", balanced_clips(["a", "b", "c"], 3), windows_per_clip=4, seed=1)
    make_run(root / "run_k4", num_clusters=4, centres_from=train)
    make_run(root / "run_k12", num_clusters=12, centres_from=train, seed=1)
    return root, train, test


def test_table2_end_to_end(workspace, capsys):
    root, train, _ = workspace
    out = root / "t2"
    rows = run_table2([root / "run_k4", root / "run_k12"], train, out, kmeans_k=[3, 24])
    assert rows["source"].tolist() == [
        "p_clust (run_k4)",
        "p_clust (run_k12)",
        "k-means (run_k4 embeddings)",
        "k-means (run_k4 embeddings)",
    ]
    assert rows["K"].tolist() == [4, 12, 3, 24]
    assert (rows["active"] <= rows["K"]).all() and (rows["active"] >= 1).all()
    # The default budget is 37% of K, capped by the active clusters.
    expected = [
        min(a, max(1, round(0.37 * k))) for a, k in zip(rows["active"], rows["K"], strict=True)
    ]
    assert rows["labeled"].tolist() == expected
    assert rows["VM"].between(0, 1).all() and rows["recall"].between(0, 1).all()
    assert (rows["vm_windows"] == 96).all()
    # Every window has exactly one true label and a labeled cluster labels all its windows:
    # recall = correct / 96 and precision = correct / labeled windows.
    np.testing.assert_allclose(rows["recall"] * 96, rows["precision"] * rows["labeled_windows"])
    assert (out / "table2.md").read_text().count("\n|") == 6  # header, rule, four rows
    assert pd.read_csv(out / "table2.csv").shape[0] == 4
    assert "| Source | K |" in capsys.readouterr().out


def test_table2_budgets_per_row(workspace):
    root, train, _ = workspace
    rows = run_table2([root / "run_k12"], train, root / "t2b", kmeans_k=[24], budgets=[2, 5])
    assert rows["labeled"].tolist() == [2, 5]


def test_table3_end_to_end_and_resumable(workspace, capsys):
    root, train, test = workspace
    out = root / "t3"
    cfg = FinetuneConfig(steps=3, batch_size=8, progress=False)
    rows = run_table3(root / "run_k12", train, test, [2, 5], out, cfg=cfg)
    assert rows["strategy"].tolist() == [
        "random-scratch",
        "random-pretrained",
        "cluster",
        "random-scratch",
        "random-pretrained",
        "cluster",
        "all",
    ]
    assert rows["budget"].tolist() == [2, 2, 2, 5, 5, 5, 96]
    random_rows = rows[rows["strategy"].str.startswith("random")]
    assert (random_rows["examples"] == random_rows["budget"]).all()  # no propagation
    cluster_rows = rows[rows["strategy"] == "cluster"]
    assert (cluster_rows["examples"] >= cluster_rows["budget"]).all()
    assert rows["mAP"].between(0, 1).all()
    for name in ("table3.md", "table3.csv", "table3.png", "labels.sqlite"):
        assert (out / name).is_file()
    printed = capsys.readouterr().out
    assert "Label efficiency" not in printed and "mAP ratio" in printed

    # A second run reuses every row: nothing is retrained.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/checkpoint.pt")}
    assert len(stamps) == 7
    again = run_table3(root / "run_k12", train, test, [2, 5], out, cfg=cfg)
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/checkpoint.pt")} == stamps
    pd.testing.assert_frame_equal(again, rows)

    # A larger budget extends the labeling sessions and trains only the new rows.
    more = run_table3(root / "run_k12", train, test, [2, 5, 9], out, cfg=cfg)
    assert len(more) == 10
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_table3_budgets_past_the_active_clusters_train_one_cluster_row(workspace, capsys):
    root, train, test = workspace
    out = root / "t3_past"
    cfg = FinetuneConfig(steps=2, batch_size=8, progress=False)
    rows = run_table3(root / "run_k12", train, test, [40, 60], out, cfg=cfg, topline=False)
    cluster = rows[rows["strategy"] == "cluster"]
    # At most 12 active clusters: both budgets ask every cluster once, one row stands for both.
    assert len(cluster) == 1 and cluster["budget"].iloc[0] <= 12
    assert rows[rows["strategy"] == "random-scratch"]["budget"].tolist() == [40, 60]
    printed = capsys.readouterr().out
    assert "not trained twice" in printed
    text = (out / "table3.md").read_text()
    assert "n/ax" not in text and "| n/a |" in text  # no random row at the cluster budget


def test_reproduce_cli(workspace):
    root, train, test = workspace
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["reproduce", "table2", str(root / "run_k4"), "--store", str(train)]
        + ["--out", str(root / "cli2"), "--clusters", "5"],
    )
    assert result.exit_code == 0, result.output
    assert (root / "cli2/table2.md").is_file()
    result = runner.invoke(
        app,
        ["reproduce", "table3", str(root / "run_k4"), "--store", str(train)]
        + ["--test-store", str(test), "--budget", "3", "--out", str(root / "cli3")]
        + ["--steps", "2", "--batch-size", "4", "--no-topline"],
    )
    assert result.exit_code == 0, result.output
    assert pd.read_csv(root / "cli3/table3.csv")["strategy"].tolist() == [
        "random-scratch",
        "random-pretrained",
        "cluster",
    ]
