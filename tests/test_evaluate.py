"""`coincide evaluate` and the QbE probe during training, on synthetic stores."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from coincide.cli.commands import app
from coincide.config.settings import load_config
from coincide.errors import UserError
from coincide.evaluation.measure import cap_windows, labeled_windows, split_by_media
from coincide.evaluation.metrics import shallow_classifier_map
from coincide.evaluation.probe import TrainingProbe, evaluate_during_training
from coincide.evaluation.qbe import clip_qbe_map, qbe_map
from coincide.evaluation.representations import pool_logmel, write_fixed_representation
from coincide.run_folder import CURVE_FILE
from coincide.stages.evaluate import EvaluateSettings, metrics_markdown
from coincide.stages.evaluate import run as evaluate_run
from coincide.stages.train import train
from coincide.store.features import open_store
from coincide.train.checkpoint import load_models
from eval_helpers import MEL, TINY, make_store

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("stores")
    train_store = make_store(root / "train", ["dog", "cat", "car"], 4, frames=False, seed=1)
    test_store = make_store(root / "test", ["dog", "cat", "car"], 3, frames=False, seed=2)
    return train_store, test_store


@pytest.fixture(scope="module")
def trained_run(stores: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "aa"
    train(load_config(["small"], TINY), stores[0], run_dir)
    return run_dir


def test_pool_logmel_worked_example():
    # Two mel bins over three frames: bin 0 = 1, 2, 3 and bin 1 = 4, 4, 4.
    windows = np.array([[[1.0, 2.0, 3.0], [4.0, 4.0, 4.0]]], dtype=np.float32)
    np.testing.assert_allclose(pool_logmel(windows, "flatten"), [[1, 2, 3, 4, 4, 4]])
    # Means 2 and 4, population standard deviations sqrt(2/3) and 0.
    np.testing.assert_allclose(
        pool_logmel(windows, "mean_std"), [[2.0, 4.0, np.sqrt(2 / 3), 0.0]], rtol=1e-6
    )
    with pytest.raises(ValueError, match="pooling 'max'"):
        pool_logmel(windows, "max")  # type: ignore[arg-type]


def test_split_by_media_keeps_clips_whole_and_is_seeded(stores):
    windows = labeled_windows(open_store(stores[1]))
    train_idx, test_idx = split_by_media(windows)
    assert len(train_idx) + len(test_idx) == len(windows) == 9 * 4
    assert not set(windows.media[train_idx]) & set(windows.media[test_idx])
    assert len(set(windows.media[train_idx])) == 4  # 9 media: half (rounded down) train
    again, _ = split_by_media(windows)
    np.testing.assert_array_equal(train_idx, again)
    np.testing.assert_array_equal(cap_windows(5, None), np.arange(5))
    capped = cap_windows(100, 7)
    assert len(capped) == 7 and len(set(capped)) == 7 and (np.diff(capped) > 0).all()


def test_evaluate_writes_metrics_equal_to_direct_computation(stores, trained_run):
    train_store, test_store = stores
    metrics = evaluate_run(EvaluateSettings(trained_run, test_store, train_store))

    saved = json.loads((trained_run / "eval" / "metrics.json").read_text())
    record = json.loads((trained_run / "eval" / "settings.json").read_text())
    assert record["settings"]["train_store"] == str(train_store.absolute())
    assert saved["qbe_map"] == pytest.approx(metrics["qbe_map"])
    # The same numbers from the checkpoint, embedded and scored directly.
    encoder = load_models(trained_run / "checkpoints" / "last.pt")["audio"]
    test = open_store(test_store)
    with torch.no_grad():
        embeddings = encoder(torch.from_numpy(test.logmel[:]).unsqueeze(1)).numpy()
    labels = test.index["labels"].tolist()
    media = test.index["media_id"].to_numpy(dtype=str)
    # qbe_map leaves out pairs of windows of one media; qbe_map_same_media is the old count.
    honest = qbe_map(embeddings, labels, media=media)
    assert saved["qbe_map"] == pytest.approx(honest, abs=1e-6)
    assert saved["qbe_map_same_media"] == pytest.approx(qbe_map(embeddings, labels), abs=1e-6)
    assert saved["qbe_map_same_media"] != pytest.approx(honest, abs=1e-6)
    assert saved["clip_qbe_map"] == pytest.approx(clip_qbe_map(embeddings, labels, media))
    assert saved["qbe_classes"] == 3 and saved["test_windows"] == 36
    assert (saved["test_clips"], saved["clip_qbe_classes"]) == (9, 3)
    assert saved["embed_dim"] == 8
    train_data = open_store(train_store)
    with torch.no_grad():
        train_emb = encoder(torch.from_numpy(train_data.logmel[:]).unsqueeze(1)).numpy()
    direct = shallow_classifier_map(
        train_emb, train_data.index["labels"].tolist(), embeddings, labels, seed=0
    )
    assert saved["shallow_map"] == pytest.approx(direct, abs=1e-6)
    assert saved["shallow_train_windows"] == 48
    table = (trained_run / "eval" / "metrics.md").read_text()
    assert f"| QbE retrieval mAP | {saved['qbe_map']:.3f} over 3 classes (pairs of" in table
    assert f"| QbE retrieval mAP, same media counted | {saved['qbe_map_same_media']:.3f}" in table
    assert f"| clip QbE retrieval mAP | {saved['clip_qbe_map']:.3f} over 3 classes" in table


def test_evaluate_logmel_baseline_without_train_store(stores, tmp_path):
    _, test_store = stores
    run_dir = tmp_path / "b"
    write_fixed_representation(run_dir, "mean_std")
    metrics = evaluate_run(EvaluateSettings(run_dir, test_store))
    test = open_store(test_store)
    vectors = pool_logmel(test.logmel[:], "mean_std")
    assert metrics["representation"] == "logmel-mean_std"
    assert metrics["embed_dim"] == 2 * MEL
    labels, media = test.index["labels"].tolist(), test.index["media_id"].to_numpy(dtype=str)
    assert metrics["qbe_map"] == pytest.approx(qbe_map(vectors, labels, media=media))
    # No training store: the classifier trains on 4 of the 9 test media, scores the other 5.
    assert metrics["shallow_split"] == "test store split in half by media"
    assert (metrics["shallow_train_windows"], metrics["shallow_test_windows"]) == (16, 20)
    assert 0.0 < metrics["shallow_map"] <= 1.0


def test_evaluate_user_errors(stores, tmp_path):
    _, test_store = stores
    empty_run = tmp_path / "empty"
    empty_run.mkdir()
    with pytest.raises(UserError, match="holds no checkpoints/last.pt"):
        evaluate_run(EvaluateSettings(empty_run, test_store))
    with pytest.raises(UserError, match="does not exist"):
        evaluate_run(EvaluateSettings(tmp_path / "missing", test_store))
    unlabeled = make_store(tmp_path / "unlabeled", ["x"], 2, frames=False)
    (unlabeled / "labels.json").unlink()
    write_fixed_representation(tmp_path / "b", "flatten")
    with pytest.raises(UserError, match="has no labeled windows"):
        evaluate_run(EvaluateSettings(tmp_path / "b", unlabeled))


class _Recorder:
    def __init__(self) -> None:
        self.points: list[tuple[str, float, int]] = []

    def add_scalar(self, tag: str, scalar_value: float, global_step: int) -> None:
        self.points.append((tag, scalar_value, global_step))


def test_training_probe_curve_and_resume(stores, trained_run, tmp_path):
    _, test_store = stores
    encoder = load_models(trained_run / "checkpoints" / "last.pt")["audio"]
    recorder = _Recorder()
    probe = TrainingProbe(test_store, tmp_path, max_windows=20, seed=3, writer=recorder)
    assert len(probe.positions) == 20

    first = probe(encoder, 10)
    test = open_store(test_store)
    with torch.no_grad():
        subset = encoder(torch.from_numpy(test.logmel[probe.positions]).unsqueeze(1)).numpy()
    assert first == pytest.approx(qbe_map(subset, probe.labels, media=probe.media), abs=1e-6)
    clip_first = clip_qbe_map(subset, probe.labels, probe.media)
    assert encoder.training is False  # load_models gives eval mode, and the probe restores it
    probe(encoder, 20)
    # A resumed run measures step 20 again: the old row is replaced, not duplicated.
    probe(encoder, 20)
    with open(tmp_path / CURVE_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [10, 20]
    assert float(rows[0]["qbe_map"]) == pytest.approx(first, abs=1e-6)
    assert float(rows[0]["clip_qbe_map"]) == pytest.approx(clip_first, abs=1e-6)
    assert [(tag, step) for tag, _, step in recorder.points] == [
        ("eval/qbe_map", 10),
        ("eval/qbe_map", 20),
        ("eval/qbe_map", 20),
    ]
    # Going back to step 15 drops every later point.
    probe(encoder, 15)
    with open(tmp_path / CURVE_FILE, newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [10, 15]


def test_metrics_markdown_without_shallow():
    text = metrics_markdown(
        {
            "representation": "encoder",
            "embed_dim": 128,
            "test_store": "t",
            "test_windows": 10,
            "qbe_map": 0.5,
            "qbe_classes": 2,
            "qbe_per_class": {"a": 0.25, "b": 0.75},
            "shallow_map": None,
        }
    )
    assert "| shallow classifier mAP | not measured |" in text
    assert "| a | 0.250 |" in text and "| b | 0.750 |" in text
    # A metrics.json from before same-media pairs were left out: its QbE counted them.
    assert "| QbE retrieval mAP, same media counted | 0.500 over 2 classes (the old" in text
    assert "| QbE retrieval mAP |" not in text


def test_evaluate_command_prints_the_table(stores, trained_run):
    train_store, test_store = stores
    args = ["evaluate", str(trained_run), "--test-store", str(test_store)]
    result = CliRunner().invoke(app, [*args, "--store", str(train_store)])
    assert result.exit_code == 0, result.output
    saved = json.loads((trained_run / "eval" / "metrics.json").read_text())
    assert f"| QbE retrieval mAP | {saved['qbe_map']:.3f} over 3 classes (" in result.output


def test_evaluate_during_training_scores_every_labeled_window_of_a_small_store(
    stores, trained_run, tmp_path
):
    _, test_store = stores
    encoder = load_models(trained_run / "checkpoints" / "last.pt")["audio"]
    score = evaluate_during_training(encoder, test_store, 5, tmp_path)
    test = open_store(test_store)
    with torch.no_grad():
        embeddings = encoder(torch.from_numpy(test.logmel[:]).unsqueeze(1)).numpy()
    # 36 labeled windows, fewer than the probe's 2000: the subset is the whole store.
    labels, media = test.index["labels"].tolist(), test.index["media_id"].to_numpy(dtype=str)
    assert score == pytest.approx(qbe_map(embeddings, labels, media=media), abs=1e-6)
    with open(tmp_path / CURVE_FILE, newline="") as f:
        assert [(r["step"], r["windows"]) for r in csv.DictReader(f)] == [("5", "36")]
