"""Tables 2 and 3: label-efficiency arithmetic by hand, and both tables end to end (tiny)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from coincide.classifier.train import FinetuneConfig
from coincide.cli.commands import app
from coincide.errors import UserError
from coincide.experiments.table2 import Table2Settings, run_table2, vm_over_single_label
from coincide.experiments.table3 import ALL_QUERIES, Query, parse_queries, run_table3
from coincide.experiments.table3_report import budget_to_reach, label_efficiency, summarize

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


def test_label_efficiency_spread_by_hand():
    rows = pd.DataFrame(
        {
            "strategy": ["random-pretrained"] * 2 + ["cluster"],
            "budget": [10, 100, 10],
            "mAP": [0.2, 0.4, 0.3],
            "mAP_sd": [0.02, 0.04, 0.06],
        }
    )
    row = label_efficiency(rows, "random-pretrained").iloc[0]
    assert row["map_ratio"] == pytest.approx(1.5)
    # Delta method: 1.5 * sqrt((0.06 / 0.3)^2 + (0.02 / 0.2)^2).
    assert row["map_ratio_sd"] == pytest.approx(1.5 * math.sqrt(0.2**2 + 0.1**2))
    # mAP 0.3 is halfway from 0.2 to 0.4 in log budget: sqrt(10 * 100); 0.24 and 0.36 at 20 % and
    # 80 % of the way.
    assert row["budget_ratio"] == pytest.approx(math.sqrt(1000) / 10)
    assert row["budget_ratio_low"] == pytest.approx(10 ** (1 + 0.2) / 10)
    assert row["budget_ratio_high"] == pytest.approx(10 ** (1 + 0.8) / 10)


def test_summarize_gives_mean_and_sample_sd_over_seeds():
    rows = pd.DataFrame(
        {
            "strategy": ["cluster"] * 3 + ["all"],
            "query": ["paper"] * 3 + [""],
            "budget": [5, 5, 5, 96],
            "seed": [0, 1, 2, 0],
            "examples": [10, 12, 14, 96],
            "mAP": [0.2, 0.3, 0.4, 0.9],
            "d_prime": [1.0, 2.0, 3.0, 4.0],
        }
    )
    summary = summarize(rows).set_index("strategy")
    assert summary.loc["cluster", "mAP"] == pytest.approx(0.3)
    assert summary.loc["cluster", "mAP_sd"] == pytest.approx(0.1)
    assert summary.loc["cluster", "seeds"] == 3 and summary.loc["cluster", "examples"] == 12
    assert np.isnan(summary.loc["all", "mAP_sd"])


def test_queries_parse_to_named_rows():
    assert parse_queries("member=medoid, order=size,checks=3") == [
        Query(member="medoid"),
        Query(order="size"),
        Query(check_every=3),
    ]
    assert parse_queries("all") == list(ALL_QUERIES)
    assert Query(order="size-uncertainty").strategy == "cluster[order=size-uncertainty]"
    assert Query().strategy == "cluster"
    with pytest.raises(UserError, match="not a query"):
        parse_queries("member=loudest")


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
    runs = (root / "run_k4", root / "run_k12")
    rows = run_table2(Table2Settings(runs, train, out, kmeans_k=(3, 24), head_steps=(20,)))
    assert rows["source"].tolist() == [
        "p_clust (run_k4)",
        "p_clust +20 steps (run_k4)",
        "k-means (run_k4 embeddings)",
        "p_clust (run_k12)",
        "p_clust +20 steps (run_k12)",
        "k-means (run_k12 embeddings)",
        "k-means (run_k4 embeddings)",
        "k-means (run_k4 embeddings)",
    ]
    assert rows["method"].tolist() == [
        "head", "head-steps-20", "kmeans-4", "head", "head-steps-20", "kmeans-12", "kmeans-3",
        "kmeans-24",
    ]  # fmt: skip
    assert rows["K"].tolist() == [4, 4, 4, 12, 12, 12, 3, 24]
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
    text = (out / "table2.md").read_text()
    assert text.split("## The head against")[0].count("\n|") == 10  # header, rule, eight rows
    # Side by side: each run's heads, then k-means at the same K.
    side = text.split("## The head against k-means at the same K")[1]
    assert side.count("\n|") == 8
    assert pd.read_csv(out / "table2.csv").shape[0] == 8
    assert json.loads((out / "settings.json").read_text())["settings"]["kmeans_k"] == [3, 24]
    printed = capsys.readouterr().out
    assert "| Source | K |" in printed and "same K" in printed


def test_table2_budgets_per_row(workspace):
    root, train, _ = workspace
    settings = Table2Settings(
        (root / "run_k12",), train, root / "t2b", kmeans_k=(24,), budgets=(2, 5),
        kmeans_at_head_k=False,
    )  # fmt: skip
    rows = run_table2(settings)
    assert rows["labeled"].tolist() == [2, 5]


FAST = FinetuneConfig(steps=4, batch_size=8, eval_every=2, patience=2, progress=False)


def test_table3_seeds_means_and_resume(workspace, capsys):
    root, train, test = workspace
    out = root / "t3"
    rows = run_table3(root / "run_k12", train, test, [2, 5], out, cfg=FAST, seeds=[0, 1], workers=1)
    assert rows.groupby("seed").size().to_dict() == {0: 7, 1: 6}  # the topline has seed 0
    assert sorted(rows["strategy"].unique()) == [
        "all",
        "cluster",
        "random-pretrained",
        "random-scratch",
    ]
    random_rows = rows[rows["strategy"].str.startswith("random")]
    assert (random_rows["examples"] == random_rows["budget"]).all()  # no propagation
    cluster_rows = rows[rows["strategy"] == "cluster"]
    assert (cluster_rows["examples"] >= cluster_rows["budget"]).all()
    assert cluster_rows["label_precision"].between(0, 1).all()
    assert cluster_rows["precision_estimate"].isna().all()  # no checks, no estimate
    assert rows["mAP"].between(0, 1).all()
    summary = pd.read_csv(out / "table3.csv")
    assert len(summary) == 7
    cluster5 = summary[(summary["strategy"] == "cluster") & (summary["budget"] == 5)].iloc[0]
    seeds5 = cluster_rows[cluster_rows["budget"] == 5]["mAP"]
    assert cluster5["seeds"] == 2
    assert cluster5["mAP"] == pytest.approx(seeds5.mean())
    assert cluster5["mAP_sd"] == pytest.approx(seeds5.std(ddof=1), nan_ok=True)
    for name in ("table3.md", "table3.csv", "table3_seeds.csv", "table3.png", "labels.sqlite"):
        assert (out / name).is_file()
    record = json.loads((out / "settings.json").read_text())
    assert (record["command"], record["settings"]["seeds"]) == ("reproduce table3", [0, 1])
    text = (out / "table3.md").read_text()
    assert " ± " in text and "CPU-minutes" in text
    printed = capsys.readouterr().out
    assert "mAP ratio" in printed and "classifiers in" in printed

    # A second run reuses every row: nothing is retrained.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/checkpoint.pt")}
    assert len(stamps) == 13
    again = run_table3(
        root / "run_k12", train, test, [2, 5], out, cfg=FAST, seeds=[0, 1], workers=1
    )
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/checkpoint.pt")} == stamps
    pd.testing.assert_frame_equal(again, rows)

    # A third seed trains only its rows.
    more = run_table3(
        root / "run_k12", train, test, [2, 5], out, cfg=FAST, seeds=[0, 1, 2], workers=1
    )
    assert len(more) == 19
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_table3_queries_are_extra_rows_with_the_stopping_signal(workspace):
    root, train, test = workspace
    out = root / "t3q"
    rows = run_table3(
        root / "run_k4", train, test, [3], out, cfg=FAST, seeds=[0], queries=list(ALL_QUERIES),
        topline=False, workers=1,
    )  # fmt: skip
    strategies = rows["strategy"].tolist()
    assert strategies.count("cluster") == 1
    for query in ALL_QUERIES:
        assert query.strategy in strategies
    checks = rows[rows["strategy"] == Query(check_every=4).strategy].iloc[0]
    other = rows[rows["strategy"] == "cluster[member=medoid]"].iloc[0]
    assert np.isnan(other["precision_estimate"])
    # Budget 3 with checks every 4 clusters asks no check yet: no estimate either.
    assert np.isnan(checks["precision_estimate"])
    text = (out / "table3.md").read_text()
    assert "Cluster (member=typical): head" in text and "Other queries" in text


def test_table3_budgets_past_the_active_clusters_train_one_cluster_row(workspace, capsys):
    """Also the path with two worker processes."""
    root, train, test = workspace
    out = root / "t3_past"
    cfg = FinetuneConfig(steps=2, batch_size=8, progress=False)
    rows = run_table3(
        root / "run_k12", train, test, [40, 60], out, cfg=cfg, topline=False, seeds=[0],
        workers=2,
    )  # fmt: skip
    cluster = rows[rows["strategy"] == "cluster"]
    # At most 12 active clusters: both budgets ask every cluster once, one row stands for both.
    assert len(cluster) == 1 and cluster["budget"].iloc[0] <= 12
    assert rows[rows["strategy"] == "random-scratch"]["budget"].tolist() == [40, 60]
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
        + ["--steps", "2", "--batch-size", "4", "--no-topline", "--seed", "0,1"]
        + ["--workers", "1", "--queries", "member=typical"],
    )
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(root / "cli3/table3.csv")
    assert sorted(summary["strategy"]) == sorted(
        ["random-scratch", "random-pretrained", "cluster", "cluster[member=typical]"]
    )
    assert (summary["seeds"] == 2).all()
