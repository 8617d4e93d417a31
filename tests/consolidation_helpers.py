"""Synthetic feature stores and runs for the consolidation tests (cluster, label, finetune,
tables): a few hundred small log-mel windows whose class is visible in the pattern, and a run
folder holding a tiny curriculum checkpoint, all made in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from coincide.config.settings import load_config
from coincide.store.features import open_store
from coincide.store.media_labels import merge_labels
from coincide.store.writer import MediaRecord, StoreWriter, store_lock
from coincide.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    build_models,
    save_checkpoint,
)

# Small windows keep the tests fast; nothing in the consolidation code assumes 64 x 96.
MEL, FRAMES = 16, 24
EMBED_DIM = 16


def make_store(
    root: Path,
    clip_classes: list[list[str]],
    windows_per_clip: int = 5,
    seed: int = 0,
    noise: float = 0.5,
) -> Path:
    """A feature store with one clip per entry of `clip_classes` (its clip-level labels).

    Window logmel = the sum of the clip's class patterns (fixed per class name) + noise, so a
    classifier can learn the classes from a few steps.
    """
    rng = np.random.default_rng(seed)
    names = sorted({c for labels in clip_classes for c in labels})
    patterns = {
        name: np.random.default_rng(1000 + i).normal(0.0, 2.0, (MEL, FRAMES)).astype(np.float32)
        for i, name in enumerate(names)
    }
    frontend = {"n_mels": MEL, "window_frames": FRAMES, "frame_size": 8}
    labels: dict[str, list[str]] = {}
    with StoreWriter(root, frontend, chunk_windows=64) as writer:
        for clip, classes in enumerate(clip_classes):
            base = sum((patterns[c] for c in classes), np.zeros((MEL, FRAMES), np.float32))
            logmel = base + rng.normal(0.0, noise, (windows_per_clip, MEL, FRAMES))
            media_id = f"clip{clip:04d}-{root.name}"
            writer.add(
                MediaRecord(
                    media_id=media_id,
                    media_path=str(root.parent / "media" / f"{media_id}.wav"),
                    size=1000 + clip,
                    mtime_ns=clip,
                    duration_s=float(windows_per_clip),
                    logmel=logmel.astype(np.float32),
                    frames=None,
                    has_frame=np.zeros(windows_per_clip, dtype=bool),
                    time_s=np.arange(windows_per_clip) + 0.48,
                )
            )
            if classes:
                labels[media_id] = list(classes)
    with store_lock(root):
        merge_labels(root, labels)
    return root


def balanced_clips(classes: list[str], clips_per_class: int) -> list[list[str]]:
    """Single-label clips, `clips_per_class` of each class, interleaved."""
    return [[c] for _ in range(clips_per_class) for c in classes]


def make_run(
    run: Path,
    num_clusters: int = 6,
    cluster_head: bool = True,
    seed: int = 0,
    centres_from: Path | None = None,
) -> Path:
    """A run folder with RUN/checkpoints/last.pt holding a tiny f (and p_clust), as training
    writes it. Returns the checkpoint path.

    centres_from: a store whose windows 0, s, 2s, ... (evenly spaced) become the cluster
    centres (p_clust's weights = their embeddings), so that the head spreads the windows over
    several clusters as a trained one would; otherwise the weights are random.
    """
    torch.manual_seed(seed)
    cfg = load_config(
        ["paper"],
        [
            "model.audio.arch=tiny",
            "model.image.arch=tiny",
            f"model.audio.embed_dim={EMBED_DIM}",
            f"model.image.embed_dim={EMBED_DIM}",
            f"clustering.K={num_clusters}",
        ],
    )
    parts = ["audio", "cluster_head"] if cluster_head else ["audio"]
    models = build_models(cfg, parts)
    if cluster_head and centres_from is not None:
        store = open_store(centres_from)
        picks = np.linspace(0, len(store) - 1, num_clusters).astype(np.int64)
        with torch.no_grad():
            inputs = torch.from_numpy(store.logmel[picks]).unsqueeze(1)
            models["cluster_head"].weight.copy_(models["audio"].eval()(inputs))
    path = run / "checkpoints" / "last.pt"
    save_checkpoint(
        {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": cfg.to_dict(),
            "parts": parts,
            "models": models.state_dict(),
        },
        path,
    )
    return path
