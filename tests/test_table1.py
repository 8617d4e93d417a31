"""`coincide reproduce table1` end to end on tiny synthetic stores, and its summary arithmetic."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from coincide.cli.commands import app
from coincide.errors import UserError
from coincide.experiments.table1 import (
    ROW_KEYS,
    ROWS,
    Row,
    Table1Settings,
    parse_rows,
    run_folder,
    summarise,
)
from coincide.experiments.table1 import run as run_table1
from coincide.stages.evaluate import read_metrics
from eval_helpers import TINY, make_store

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stores")
    classes = ["dog", "cat", "car"]
    return {
        "av": make_store(root / "av", classes, 4, frames=True, seed=1),
        "audio": make_store(root / "audio", classes, 4, frames=False, seed=3),
        "test": make_store(root / "test", classes, 3, frames=False, seed=2),
    }


@pytest.fixture(scope="module")
def table_dir(stores: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("table1")
    args = ["reproduce", "table1", "--store", str(stores["av"])]
    args += ["--test-store", str(stores["test"]), "--out", str(out)]
    args += ["--seed", "0", "--max-train-windows", "40"]  # every row, the default
    for override in TINY:
        args += ["--set", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def _table_lines(path: Path) -> dict[str, list[str]]:
    """Row letter -> the cells of its line in table1.md."""
    lines = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 7 and cells[0][:2].rstrip(".") in {r.key for r in ROWS}:
            lines[cells[0][0]] = cells
    return lines


def test_table_has_every_supported_row_with_numbers(table_dir):
    lines = _table_lines(table_dir / "table1.md")
    text = (table_dir / "table1.md").read_text()
    assert sorted(lines) == sorted(ROW_KEYS)
    for key, cells in lines.items():
        qbe, classification = float(cells[1]), float(cells[3])
        assert 0.0 < qbe <= 1.0 and 0.0 < classification <= 1.0, key
    # Recovery is measured from b (0 %) to a (100 %) by definition, where a beats b; the tiny
    # models may not, and then the column says n/a with a note instead of a meaningless ratio.
    for column, name in ((2, "QbE"), (4, "Classification")):
        top, base = float(lines["a"][column - 1]), float(lines["b"][column - 1])
        if top > base:
            assert (lines["a"][column], lines["b"][column]) == ("100%", "0%")
            assert all(cells[column].endswith("%") for cells in lines.values())
        else:
            assert all(cells[column] == "n/a" for cells in lines.values())
            assert f"{name} recovery is n/a" in text
    assert "Row b is `logmel-flatten`" in text

    with open(table_dir / "table1.csv", newline="") as f:
        rows = {r["row"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == sorted(ROW_KEYS)
    for metric in ("qbe_map", "shallow_map"):
        if float(rows["a"][metric]) > float(rows["b"][metric]):
            assert float(rows["a"][f"{metric}_recovery"]) == pytest.approx(100.0)
            assert float(rows["b"][f"{metric}_recovery"]) == pytest.approx(0.0)
    for key in ROW_KEYS:
        metrics = read_metrics(run_folder(table_dir, key, 0))
        assert metrics is not None
        assert float(rows[key]["qbe_map"]) == pytest.approx(metrics["qbe_map"])
        # Beside the honest window QbE: clip QbE and the old same-media-counting figure.
        assert float(lines[key][5]) == pytest.approx(metrics["clip_qbe_map"], abs=5e-4)
        assert float(lines[key][6]) == pytest.approx(metrics["qbe_map_same_media"], abs=5e-4)
        assert float(rows[key]["qbe_map_same_media"]) == pytest.approx(
            metrics["qbe_map_same_media"]
        )
    assert (table_dir / "table1.png").stat().st_size > 0
    assert (run_folder(table_dir, "c", 0) / "checkpoints" / "last.pt").is_file()
    assert not (run_folder(table_dir, "b", 0) / "checkpoints").exists()


def test_resume_skips_rows_already_done(table_dir, stores):
    done = {key: run_folder(table_dir, key, 0) / "eval" / "metrics.json" for key in ROW_KEYS}
    before = {key: path.stat().st_mtime_ns for key, path in done.items()}
    checkpoint = run_folder(table_dir, "c", 0) / "checkpoints" / "last.pt"
    trained_at = checkpoint.stat().st_mtime_ns
    # Row c lost its evaluation: it is evaluated again, from its finished training.
    done["c"].unlink()
    settings = Table1Settings(
        train_store=stores["av"],
        test_store=stores["test"],
        out=table_dir,
        rows=ROW_KEYS,
        overrides=TINY,
        max_train_windows=40,
    )
    run_table1(settings)
    after = {key: path.stat().st_mtime_ns for key, path in done.items()}
    assert {k for k in ROW_KEYS if after[k] != before[k]} == {"c"}
    assert checkpoint.stat().st_mtime_ns == trained_at

    # Row d was measured before QbE left same-media pairs out: it is measured again.
    old = json.loads(done["d"].read_text())
    del old["qbe_map_same_media"]
    old["qbe_map"] = 0.999
    done["d"].write_text(json.dumps(old))
    before = {key: path.stat().st_mtime_ns for key, path in done.items()}
    run_table1(settings)
    after = {key: path.stat().st_mtime_ns for key, path in done.items()}
    assert {k for k in ROW_KEYS if after[k] != before[k]} == {"d"}
    assert "qbe_map_same_media" in json.loads(done["d"].read_text())


def test_audio_only_store_skips_the_av_rows(stores, tmp_path):
    settings = Table1Settings(
        train_store=stores["audio"],
        test_store=stores["test"],
        out=tmp_path,
        rows=("a", "b", "d", "k"),
        overrides=TINY,
        max_train_windows=40,
    )
    text = run_table1(settings).read_text()
    # Row k has an audio-only curriculum (aa -> aa_clust); row d's is AV only.
    assert sorted(_table_lines(tmp_path / "table1.md")) == ["a", "b", "k"]
    assert "Row d (AV Correspondence (VGG) [12]) skipped: needs frames" in text
    assert "k: aa -> aa_clust" in text
    assert not run_folder(tmp_path, "d", 0).exists()


def test_unlabeled_training_store_is_a_user_error(stores, tmp_path):
    unlabeled = make_store(tmp_path / "unlabeled", ["x", "y"], 2, frames=False)
    (unlabeled / "labels.json").unlink()
    settings = Table1Settings(train_store=unlabeled, test_store=stores["test"], out=tmp_path / "o")
    with pytest.raises(UserError, match="has no clip labels"):
        run_table1(settings)


def test_parse_rows_adds_baseline_and_topline_in_table_order():
    assert parse_rows("f, c") == ("a", "b", "c", "f")
    assert parse_rows("K,a") == ("a", "b", "k")
    with pytest.raises(UserError, match="unknown row"):
        parse_rows("a,z")


def test_summary_means_spread_and_recovery():
    rows = [Row("a", "top", "row_a"), Row("b", "base", None), Row("c", "mid", "row_c")]

    def runs(qbe: list[float], shallow: list[float]) -> list[dict]:
        return [
            {"qbe_map": q, "shallow_map": s, "representation": "x"}
            for q, s in zip(qbe, shallow, strict=True)
        ]

    summary = summarise(
        rows,
        {
            "a": runs([0.8, 0.9], [0.3, 0.3]),
            "b": runs([0.4, 0.4], [0.1, 0.1]),
            "c": runs([0.6, 0.5], [0.2, 0.25]),
        },
    )
    by = {e["row"]: e for e in summary}
    # QbE means: a 0.85, b 0.40, c 0.55 -> c recovers 0.15 / 0.45 = 33.3 %.
    assert by["c"]["qbe_map"] == pytest.approx(0.55)
    assert by["c"]["qbe_map_std"] == pytest.approx(math.sqrt(0.005))
    assert by["c"]["qbe_map_recovery"] == pytest.approx(100 / 3)
    # Per seed: 0.20 / 0.45 = 44.4 % and 0.10 / 0.45 = 22.2 %, sample std 15.7.
    assert by["c"]["qbe_map_recovery_std"] == pytest.approx(math.sqrt(2) * 100 / 9)
    assert by["a"]["qbe_map_recovery"] == pytest.approx(100.0)
    assert by["b"]["qbe_map_recovery"] == pytest.approx(0.0)
    # Classification: a 0.30, b 0.10, c 0.225 -> 62.5 %.
    assert by["c"]["shallow_map_recovery"] == pytest.approx(62.5)


def test_recovery_is_na_when_the_topline_does_not_beat_the_baseline():
    rows = [Row("a", "top", "row_a"), Row("b", "base", None), Row("c", "mid", "row_c")]
    runs = {
        key: [{"qbe_map": q, "shallow_map": s, "representation": "x"}]
        for key, q, s in (("a", 0.45, 0.50), ("b", 0.34, 0.52), ("c", 0.36, 0.35))
    }
    by = {e["row"]: e for e in summarise(rows, runs)}
    assert by["c"]["qbe_map_recovery"] == pytest.approx(100 * 0.02 / 0.11)
    assert all(math.isnan(by[k]["shallow_map_recovery"]) for k in "abc")


def test_train_with_eval_store_logs_a_qbe_curve(stores, tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", str(run_dir), "--store", str(stores["audio"]), "--config", "small"]
    args += ["--test-store", str(stores["test"]), "--eval-every", "1"]
    for override in TINY:
        args += ["--set", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    # Audio-only curriculum: 2 stages x 2 steps, measured at step 0 and after every step.
    with open(run_dir / "eval_curve.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3, 4]
    # Every 3 steps: 0 and 3, and the last step (4) that ends the training.
    args[args.index("--eval-every") + 1] = "3"
    args[1] = str(tmp_path / "run3")
    assert CliRunner().invoke(app, args).exit_code == 0
    with open(tmp_path / "run3" / "eval_curve.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [0, 3, 4]
    assert all(0.0 <= float(r["qbe_map"]) <= 1.0 for r in rows)
    assert "held-out QbE mAP" in result.output


def test_eval_every_without_eval_store_is_a_user_error(stores, tmp_path):
    args = ["train", str(tmp_path / "run"), "--store", str(stores["audio"]), "--eval-every", "5"]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, UserError)
    assert "--eval-every needs --test-store" in str(result.exception)
