"""A small trained run for the predict / embed / search / export tests, made in seconds.

Media: the real recordings of tests/data (two spoken digits, crackling fire) and generated
noise and tone files; they are ingested into a store with clip labels, a tiny curriculum
checkpoint is written as training writes it, and a classifier is fine-tuned on the store's
labels with `coincide.classifier.train` (a few steps: the tests check plumbing and numbers, not
skill).
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

import mediagen
from coincide.classifier.train import FinetuneConfig, TrainingSet, finetune_strategy
from coincide.config.settings import load_config
from coincide.stages.ingest import IngestSettings
from coincide.stages.ingest import run as ingest
from coincide.store.features import open_store
from coincide.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    build_models,
    save_checkpoint,
)

DATA = Path(__file__).parent / "data"
RECORDINGS = {"9_theo_16.wav": "speech", "7_theo_36.wav": "speech", "4-164661-A-12.flac": "fire"}


@dataclass
class TinyRun:
    """Paths of the fixture: the run, its store, the media folder and each media file's label."""

    run: Path
    store: Path
    media: Path
    labels: dict[str, str]


def write_noise_wav(path: Path, seconds: float, seed: int, rate: int = 16000) -> Path:
    """White noise (seeded), 16-bit mono WAV."""
    samples = np.random.default_rng(seed).normal(0.0, 0.2, round(seconds * rate))
    pcm = np.round(np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return path


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def write_curriculum_checkpoint(run: Path, store: Path, seed: int = 0) -> Path:
    """RUN/checkpoints/last.pt with a tiny f (d = 128), in the training checkpoint format.

    The input BatchNorm holds the store's log-mel mean and variance, as training leaves it.
    """
    torch.manual_seed(seed)
    cfg = load_config(["small"], ["model.audio.arch=tiny", "model.image.arch=tiny"])
    models = build_models(cfg, ["audio"])
    logmel = open_store(store).logmel[:]
    models["audio"].input_norm.running_mean.fill_(float(logmel.mean()))
    models["audio"].input_norm.running_var.fill_(float(logmel.var()))
    path = run / "checkpoints" / "last.pt"
    save_checkpoint(
        {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": cfg.to_dict(),
            "parts": ["audio"],
            "models": models.state_dict(),
        },
        path,
    )
    return path


def make_tiny_run(root: Path, finetune: bool = True) -> TinyRun:
    """Media, a labeled store, a curriculum checkpoint and (optionally) a fine-tuned classifier."""
    media = root / "media"
    media.mkdir(parents=True)
    labels: dict[str, str] = {}
    for name, label in RECORDINGS.items():
        (media / name).write_bytes((DATA / name).read_bytes())
        labels[name] = label
    for seed in range(2):
        labels[write_noise_wav(media / f"noise{seed}.wav", 3.0, seed).name] = "noise"
    labels[mediagen.write_audio(media / "tone.flac", "flac", seconds=4.0).name] = "tone"
    csv_path = root / "labels.csv"
    csv_path.write_text(
        "path,label\n" + "".join(f"{media / n},{label}\n" for n, label in labels.items()),
        encoding="utf-8",
    )
    store = root / "store"
    ingest(IngestSettings((media,), store, labels_csv=csv_path), console=quiet())

    run = root / "run"
    checkpoint = write_curriculum_checkpoint(run, store)
    if finetune:
        features = open_store(store)
        labeled = TrainingSet.from_window_labels([list(x) for x in features.index["labels"]])
        cfg = FinetuneConfig(steps=4, batch_size=8, checkpoint_every=4, progress=False)
        torch.manual_seed(0)
        finetune_strategy(
            "random-pretrained",
            checkpoint,
            features,
            labeled,
            run / "finetune" / "all",
            cfg,
            device=torch.device("cpu"),
        )
    return TinyRun(run=run, store=store, media=media, labels=labels)
