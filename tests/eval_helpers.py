"""Synthetic labeled feature stores for the evaluation and Table 1 tests, made in milliseconds:
small log-mel windows whose class shows as a fixed pattern, optionally with a frame per window."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from coincide.store.media_labels import merge_labels
from coincide.store.writer import MediaRecord, StoreWriter, store_lock

# Small windows keep the tests fast; nothing in the evaluation code assumes 64 x 96.
MEL, FRAMES, FRAME_SIZE = 16, 24, 16

# Settings that make every Table 1 row train in well under a second on CPU.
TINY = (
    "model.audio.arch=tiny",
    "model.image.arch=tiny",
    "model.audio.embed_dim=8",
    "model.image.embed_dim=8",
    "model.coincidence_hidden=8",
    "clustering.K=4",
    "data.batch_size=4",
    "data.workers=0",
    "curriculum.max_steps=2",
    "optim.warmup_steps=0",
    "eval.val_pairs=4",
    "log.progress=false",
    "log.every=1",
)


def make_store(
    root: Path,
    classes: list[str],
    clips_per_class: int,
    windows_per_clip: int = 4,
    frames: bool = True,
    seed: int = 0,
    signal: float = 0.1,
) -> Path:
    """A store of `clips_per_class` clips per class, each labeled with its class.

    Window log-mel = the class's fixed pattern (standard deviation `signal`) + unit noise: with
    the default the classes are learnable but not perfectly separable, so every metric stays
    below 1. Frames (when asked) are a class grey level + noise, so both modalities carry it.
    """
    rng = np.random.default_rng(seed)
    patterns = {
        name: np.random.default_rng(100 + i).normal(0.0, signal, (MEL, FRAMES)).astype(np.float32)
        for i, name in enumerate(classes)
    }
    frontend = {"n_mels": MEL, "window_frames": FRAMES, "frame_size": FRAME_SIZE}
    labels: dict[str, list[str]] = {}
    n = windows_per_clip
    with StoreWriter(root, frontend, chunk_windows=32) as writer:
        for k, name in enumerate(classes):
            for clip in range(clips_per_class):
                media_id = f"{root.name}-{name}-{clip:03d}"
                logmel = patterns[name] + rng.normal(0.0, 1.0, (n, MEL, FRAMES))
                pictures = None
                if frames:
                    level = 40 + 200 * k / max(1, len(classes) - 1)
                    noise = rng.normal(0.0, 10.0, (n, FRAME_SIZE, FRAME_SIZE, 3))
                    pictures = np.clip(level + noise, 0, 255).astype(np.uint8)
                writer.add(
                    MediaRecord(
                        media_id=media_id,
                        media_path=f"/synthetic/{media_id}.mp4",
                        size=1000 + clip,
                        mtime_ns=clip,
                        duration_s=float(n),
                        logmel=logmel.astype(np.float32),
                        frames=pictures,
                        has_frame=np.full(n, frames),
                        time_s=np.arange(n, dtype=np.float64) + 0.5,
                    )
                )
                labels[media_id] = [name]
    with store_lock(root):
        merge_labels(root, labels)
    return root
