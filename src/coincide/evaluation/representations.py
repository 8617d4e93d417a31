"""Fixed representations of a store's windows: what Table 1 evaluates, row by row.

A representation turns windows of a feature store into vectors, `(n, d)` float32:
- `EncoderRepresentation`: a trained audio encoder f (rows a and c-k);
- `LogMelRepresentation`: the log-mel input itself (row b, the baseline of paper 4.1).

A run folder says which one it is: `RUN/representation.json` names a fixed representation
(written by `reproduce table1` for row b); without it the run's newest checkpoint holds f.

The log-mel baseline follows Jansen et al. 2018 [11], whose "raw spectrogram features" baseline
this paper reuses (0.421 QbE mAP, 0.065 classification mAP in both papers): the 0.96 s context
window itself, i.e. the 64 x 96 log-mel patch flattened into a 6144-dimensional vector
(`pooling="flatten"`, the default). The text of [11] available here does not spell out the
pooling, so `pooling="mean_std"` (the mean and standard deviation over time of each mel bin,
128 values, the usual summary of a spectrogram into a d = 128 vector) is offered as the
alternative reading; the row b table entry names the pooling it used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from coincide.config.choices import POOLINGS, Pooling
from coincide.dist import default_device, inference_autocast
from coincide.errors import UserError
from coincide.files import write_json_atomic
from coincide.models.embed_store import DEFAULT_BATCH_SIZE, embed_windows, evaluating
from coincide.run_folder import REPRESENTATION_FILE
from coincide.store.features import FeatureStore


class Representation(Protocol):
    """Maps windows of a store to vectors."""

    name: str

    def embed(self, store: FeatureStore, positions: np.ndarray | None = None) -> np.ndarray:
        """Vectors of the windows at global `positions` (all windows when None), `(n, d)`."""
        ...


def pool_logmel(logmel: np.ndarray, pooling: Pooling = "flatten") -> np.ndarray:
    """Log-mel windows `(n, mel, frames)` -> baseline vectors.

    flatten: `(n, mel * frames)`, the window itself; mean_std: `(n, 2 * mel)`, per mel bin the
    mean over time followed by the standard deviation over time.
    """
    windows = np.asarray(logmel, dtype=np.float32)
    if windows.ndim != 3:
        raise ValueError(f"expected log-mel windows (n, mel, frames), got shape {windows.shape}")
    if pooling == "flatten":
        return windows.reshape(len(windows), -1).copy()
    if pooling == "mean_std":
        return np.concatenate([windows.mean(axis=2), windows.std(axis=2)], axis=1)
    raise ValueError(f"log-mel pooling {pooling!r} is not one of {POOLINGS}")


def _chunks(positions: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [positions[i : i + batch_size] for i in range(0, len(positions), batch_size)]


@dataclass
class LogMelRepresentation:
    """The log-mel input as the representation (Table 1 row b, the baseline)."""

    pooling: Pooling = "flatten"
    batch_size: int = DEFAULT_BATCH_SIZE

    @property
    def name(self) -> str:
        return f"logmel-{self.pooling}"

    def embed(self, store: FeatureStore, positions: np.ndarray | None = None) -> np.ndarray:
        """`(n, 6144)` (flatten) or `(n, 128)` (mean_std) float32 for 64 x 96 windows."""
        wanted = np.arange(len(store)) if positions is None else np.asarray(positions, np.int64)
        parts = [pool_logmel(store.logmel[batch], self.pooling) for batch in _chunks(wanted, 4096)]
        if not parts:
            mel, frames = store.logmel.shape[1:]
            dim = mel * frames if self.pooling == "flatten" else 2 * mel
            return np.empty((0, dim), dtype=np.float32)
        return np.concatenate(parts)


@dataclass
class EncoderRepresentation:
    """A trained audio encoder f as the representation: the embedding layer's output."""

    encoder: nn.Module
    name: str = "encoder"
    batch_size: int = DEFAULT_BATCH_SIZE
    device: torch.device | None = None

    def embed(self, store: FeatureStore, positions: np.ndarray | None = None) -> np.ndarray:
        """`(n, d)` float32 embeddings f(x) of the chosen windows (eval mode, no gradient)."""
        device = self.device or default_device()
        self.encoder.to(device)
        if positions is None:
            return embed_windows(self.encoder, store, self.batch_size, device)
        return embed_positions(self.encoder, store, np.asarray(positions), self.batch_size, device)


def embed_positions(
    encoder: nn.Module,
    store: FeatureStore,
    positions: np.ndarray,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | None = None,
) -> np.ndarray:
    """Embed the windows at global `positions` (any order) with f: `(len(positions), d)` float32.

    `embed_windows` streams a whole store; this reads only the asked windows, which is what a
    probe on a fixed subset during training needs. The encoder is put back in its former mode.
    """
    device = device or default_device()
    outputs: list[np.ndarray] = []
    with evaluating(encoder), torch.inference_mode():
        for batch in _chunks(np.asarray(positions, dtype=np.int64), batch_size):
            inputs = torch.from_numpy(store.logmel[batch]).unsqueeze(1).to(device)
            # bf16 autocast on GPU as in training and `embed_windows`; float32 on CPU.
            with inference_autocast(device):
                outputs.append(encoder(inputs).float().cpu().numpy())
    if not outputs:
        return np.empty((0, int(encoder.config.embed_dim)), dtype=np.float32)
    return np.concatenate(outputs)


def write_fixed_representation(run_dir: Path, pooling: Pooling = "flatten") -> None:
    """Mark `run_dir` as the log-mel baseline (no training; `coincide evaluate` reads this)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {"kind": "logmel", "pooling": pooling}
    write_json_atomic(run_dir / REPRESENTATION_FILE, payload)


def read_fixed_representation(run_dir: Path) -> LogMelRepresentation | None:
    """The fixed representation a run folder names, or None when it is a trained run."""
    path = run_dir / REPRESENTATION_FILE
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise UserError(f"cannot parse {path} ({err}); delete it or fix the JSON.") from err
    if payload.get("kind") != "logmel" or payload.get("pooling") not in POOLINGS:
        raise UserError(
            f"{path} names {payload!r}; the only fixed representation is "
            '{"kind": "logmel", "pooling": "flatten" or "mean_std"}.'
        )
    return LogMelRepresentation(pooling=payload["pooling"])
