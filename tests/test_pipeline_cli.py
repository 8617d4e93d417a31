"""The whole command line, end to end, as a user types it: ingest -> train -> cluster -> label
-> finetune -> predict -> search -> export, on generated tones with a tiny model (plumbing and
the files each stage hands to the next, not skill)."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import coincide
from coincide.cli import app
from coincide.run_folder import (
    FINETUNE_CHECKPOINT,
    FINETUNE_DIR,
    FINETUNE_SETTINGS,
    METRICS_FILE,
    RunFolder,
)
from eval_helpers import TINY

torch.set_num_threads(1)
RATE = 16000
CLASSES = {"low": 300.0, "high": 2400.0}


def _tone(path: Path, hz: float, seconds: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * RATE)) / RATE
    signal = 0.4 * np.sin(2 * np.pi * hz * (1 + 0.02 * rng.standard_normal()) * t)
    signal += 0.02 * rng.standard_normal(len(t))
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(RATE)
        f.writeframes(np.round(np.clip(signal, -1, 1) * 32767).astype("<i2").tobytes())


def _media(folder: Path, per_class: int, seed: int) -> Path:
    """`per_class` 4-second tones of each class in `folder`, and their labels CSV."""
    folder.mkdir(parents=True)
    rows = ["path,label"]
    for c, (name, hz) in enumerate(CLASSES.items()):
        for i in range(per_class):
            path = folder / f"{name}_{i}.wav"
            _tone(path, hz, 4.0, seed + 100 * c + i)
            rows.append(f"{path},{name}")
    labels = folder.parent / f"{folder.name}_labels.csv"
    labels.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return labels


def _ok(*args: object) -> str:
    """Run `coincide ARGS...`; its stdout (progress and notes go to stderr)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"coincide {' '.join(map(str, args))}:\n{result.output}"
    return result.stdout


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    train_labels = _media(root / "train", per_class=6, seed=0)
    test_labels = _media(root / "test", per_class=3, seed=50)
    run = root / "run"
    _ok("ingest", root / "train", "--store", root / "train_store", "--labels", train_labels)
    _ok("ingest", root / "test", "--store", root / "test_store", "--labels", test_labels)
    sets = [a for key in (*TINY, "curriculum.max_steps=3") for a in ("--set", key)]
    _ok("train", run, "--store", root / "train_store", *sets)
    _ok("cluster", run, "--store", root / "train_store")
    _ok("label", run, "--store", root / "train_store", "--budget", 2, "--oracle", "store")
    _ok(
        "finetune", run, "--store", root / "train_store", "--test-store", root / "test_store",
        "--steps", 5, "--batch-size", 8, "--fixed-steps",
    )  # fmt: skip
    return {"root": root, "run": run}


def test_each_stage_leaves_what_the_next_reads(pipeline: dict[str, Path]) -> None:
    folder = RunFolder(pipeline["run"])
    assert folder.config.is_file() and folder.state.is_file()
    assert folder.best_checkpoint.is_file() or folder.last_checkpoint.is_file()
    assert any(folder.clusters(pipeline["root"] / "train_store").rglob("assignment.npy"))
    assert folder.label_store.is_file()
    assert (folder.labels("cluster") / "summary.json").is_file()
    (finetuned,) = (folder.root / FINETUNE_DIR).iterdir()  # one fine-tuning, named by the CLI
    assert (finetuned / FINETUNE_CHECKPOINT).is_file()
    assert (finetuned / FINETUNE_SETTINGS).is_file()
    metrics = json.loads((finetuned / METRICS_FILE).read_text(encoding="utf-8"))
    assert metrics, "finetune scored nothing on the test store"


def test_predict_search_and_export_use_the_finetuned_run(
    pipeline: dict[str, Path], tmp_path: Path
) -> None:
    root, run = pipeline["root"], pipeline["run"]
    clip = root / "test" / "high_0.wav"
    predicted = json.loads(_ok("predict", run, clip, "--format", "json"))
    text = json.dumps(predicted)
    assert "high_0.wav" in text and ("high" in text or "low" in text)

    hits = json.loads(_ok("search", run, "--store", root / "train_store", "--query-window", 0,
                          "--top", 3, "--format", "json"))  # fmt: skip
    windows = [hit["window"] for hit in hits["hits"]]
    assert len(windows) == 3 and 0 not in windows  # the query's own window is never a hit

    out = tmp_path / "exported"
    _ok("export", run, "--out", out, "--no-onnx")
    samples = np.random.default_rng(0).normal(0, 0.1, 3 * RATE).astype(np.float32)
    np.testing.assert_allclose(
        coincide.load_model(out).embed(samples, RATE),
        coincide.load_model(run).embed(samples, RATE),
        atol=1e-5,
    )
