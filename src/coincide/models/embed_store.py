"""Run an audio encoder over every window of a feature store, streaming, in batches.

The store is read in contiguous batches of windows (memory-mapped chunks, so RAM holds one
batch at a time plus the outputs), the next batch is read from disk in a background thread while
the current one runs through the network, and the network runs on the GPU when there is one
(bf16 autocast there, float32 on CPU). Outputs are float32 NumPy arrays in global window order.

- `embed_windows`: f(x) for every window, `(n, d)`; optionally written straight into a `.npy`
  file (memory-mapped), so even a store whose embeddings exceed RAM can be embedded.
- `assign_windows`: the arg-max cluster of p_clust(f(x)) for every window, `(n,)`, optionally
  writing the embeddings on the way (one pass over the store for both).
- `score_windows`: p_class(f(x)) for every window, `(n, C)`.
- `cached_embeddings`: f(x) of every window kept in a `.npy` file next to a JSON record of what
  made it (the model and the store); read back while the record matches, made again otherwise.
  `coincide cluster` (RUN/clusters/STORE/) and `coincide search` (RUN/search/...) both keep
  their embeddings through it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from coincide.dist import default_device, inference_autocast
from coincide.files import atomic_path, write_json_atomic
from coincide.models.heads import ClassifierHead, ClusterHead
from coincide.store.features import FeatureStore

DEFAULT_BATCH_SIZE = 512


def window_batches(
    store: FeatureStore, batch_size: int = DEFAULT_BATCH_SIZE
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield `(start, logmel)` for consecutive windows, `logmel` `(b, mel, frames)` float32.

    The next batch is read in a background thread while the caller works on the current one.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = len(store)
    starts = range(0, n, batch_size)
    if not starts:
        return
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(lambda s: store.logmel[s : s + batch_size], starts[0])
        for k, start in enumerate(starts):
            batch = pending.result()
            if k + 1 < len(starts):
                pending = reader.submit(lambda s: store.logmel[s : s + batch_size], starts[k + 1])
            yield start, batch


@contextmanager
def evaluating(*modules: nn.Module) -> Iterator[None]:
    """The block runs with `modules` in eval mode (BatchNorm uses its running statistics); each
    is put back in the mode it had afterwards."""
    modes = [module.training for module in modules]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for module, training in zip(modules, modes, strict=True):
            module.train(training)


def _map_windows(
    encoder: nn.Module,
    store: FeatureStore,
    batch_size: int,
    device: torch.device | None,
    consume: Callable[[int, torch.Tensor], None],
) -> None:
    """Call `consume(start, embeddings)` with float32 embeddings `(b, d)` of every batch.

    The encoder runs in eval mode (BatchNorm uses its running statistics) and is put back in
    the mode it had afterwards.
    """
    device = device or default_device()
    with evaluating(encoder), torch.inference_mode():
        for start, logmel in window_batches(store, batch_size):
            # (b, mel, frames) -> (b, 1, mel, frames): the encoder's single input channel.
            inputs = torch.from_numpy(logmel).unsqueeze(1).to(device, non_blocking=True)
            with inference_autocast(device):
                embeddings = encoder(inputs)
            consume(start, embeddings.float())


def _embed_dim(encoder: nn.Module) -> int:
    config = getattr(encoder, "config", None)
    if config is None or not hasattr(config, "embed_dim"):
        raise TypeError("the encoder must carry an EncoderConfig as `.config` (coincide Encoder)")
    return int(config.embed_dim)


class _EmbeddingRows:
    """The `(n, d)` float32 embeddings of `encoder`, filled batch by batch (`keep`, the consumer
    of `_map_windows`): in RAM, or memory-mapped into the `.npy` file `out` (flushed by `done`)."""

    def __init__(self, n: int, encoder: nn.Module, out: Path | None) -> None:
        dim = _embed_dim(encoder)
        if out is None:
            self.array = np.empty((n, dim), dtype=np.float32)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            self.array = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(n, dim))

    def keep(self, start: int, embeddings: torch.Tensor) -> None:
        self.array[start : start + len(embeddings)] = embeddings.cpu().numpy()

    def done(self) -> np.ndarray:
        if isinstance(self.array, np.memmap):
            self.array.flush()
        return self.array


def embed_windows(
    encoder: nn.Module,
    store: FeatureStore,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | None = None,
    out: Path | None = None,
) -> np.ndarray:
    """Embed every window of `store` with the audio encoder f.

    Args:
        encoder: a coincide audio `Encoder` (its parameters already on `device`).
        store: the feature store; windows are read in global order.
        batch_size: windows per forward pass.
        device: where to compute; None picks the GPU when there is one.
        out: a `.npy` path to write the embeddings into (memory-mapped) instead of RAM.

    Returns:
        `(n, d)` float32 embeddings, row i for window i (a memmap of `out` when given).
    """
    rows = _EmbeddingRows(len(store), encoder, out)
    _map_windows(encoder, store, batch_size, device, rows.keep)
    return rows.done()


def assign_windows(
    encoder: nn.Module,
    cluster_head: ClusterHead,
    store: FeatureStore,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | None = None,
    embeddings_out: Path | None = None,
) -> np.ndarray:
    """The arg-max cluster of p_clust(f(x)) for every window (paper 3.3: "assign every example
    to its arg-max cluster").

    Args:
        encoder, cluster_head: f and p_clust (on `device`).
        store, batch_size, device: as `embed_windows`.
        embeddings_out: also write the `(n, d)` float32 embeddings to this `.npy` file.

    Returns:
        `(n,)` int64 cluster ids in [0, K).
    """
    n = len(store)
    assignment = np.empty(n, dtype=np.int64)
    embeddings = _EmbeddingRows(n, encoder, embeddings_out) if embeddings_out else None

    def keep(start: int, batch: torch.Tensor) -> None:
        # Arg-max of the softmax is the arg-max of the cosine logits.
        assignment[start : start + len(batch)] = cluster_head(batch).argmax(dim=1).cpu().numpy()
        if embeddings is not None:
            embeddings.keep(start, batch)

    with evaluating(cluster_head):
        _map_windows(encoder, store, batch_size, device, keep)
    if embeddings is not None:
        embeddings.done()
    return assignment


def score_windows(
    encoder: nn.Module,
    classifier: ClassifierHead,
    store: FeatureStore,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | None = None,
) -> np.ndarray:
    """Class scores p_class(f(x)) of every window: softmax, or one sigmoid per class when the
    classifier is multi-label.

    Returns:
        `(n, C)` float32 scores, row i for window i.
    """
    scores: np.ndarray | None = None

    def keep(start: int, batch: torch.Tensor) -> None:
        nonlocal scores
        probs = classifier.probs(batch).float().cpu().numpy()
        if scores is None:
            scores = np.empty((len(store), probs.shape[1]), dtype=np.float32)
        scores[start : start + len(batch)] = probs

    with evaluating(classifier):
        _map_windows(encoder, store, batch_size, device, keep)
    if scores is None:
        num_classes = classifier.layers[-1].out_features
        return np.empty((0, num_classes), dtype=np.float32)
    return scores


def cached_embeddings(
    path: Path,
    identity: dict[str, object],
    encoder: Callable[[], nn.Module],
    store: FeatureStore,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | None = None,
) -> tuple[np.ndarray, bool]:
    """`(n, d)` float32 f(x) of every window of `store`, memory-mapped from `path` (a `.npy`)
    when `path`'s record (`path` with `.json`) equals `identity`; otherwise `encoder()` embeds
    them into `path` and the record is written after it. Returns (embeddings, made now)."""
    record = path.with_suffix(".json")
    if (
        path.is_file()
        and record.is_file()
        and json.loads(record.read_text(encoding="utf-8")) == identity
    ):
        return np.load(path, mmap_mode="r"), False
    record.unlink(missing_ok=True)  # the file below changes: it matches no record now
    with atomic_path(path) as tmp:
        embed_windows(encoder(), store, batch_size, device, out=tmp)
    write_json_atomic(record, identity)
    return np.load(path, mmap_mode="r"), True
