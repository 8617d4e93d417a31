"""Batches of coinciding pairs read from the feature store, streamed by DataLoader workers.

Each worker reads whole batches (batch number k goes to worker k mod workers) straight from the
store's memory maps, so nothing is loaded into RAM up front and the main process only moves
finished tensors to the device. The DataLoader hands batches out in number order whatever the
number of workers, so a stream resumed at batch k continues exactly where it stopped.

Training batches may be augmented in the workers (`PairBatches(..., augment=BatchAugment(...))`,
`coincide.data.augment`), as a pure function of the batch number, so resuming stays exact;
`read_batch`, which the held-out evaluation uses, never augments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from coincide.data.pairs import BatchSampler, PairBatch
from coincide.store.features import FeatureStore

# (batch of read_batch, its pairs, batch number) -> augmented batch: `coincide.data.augment`.
Augment = Callable[[dict[str, torch.Tensor], PairBatch, int], dict[str, torch.Tensor]]


def read_batch(store: FeatureStore, pairs: PairBatch) -> dict[str, torch.Tensor]:
    """The arrays of one batch, as CPU tensors.

    Returns "audio": anchors x1 `(B, 1, mel, time)` float32; "aa_audio": AA partners x2, same
    shape (when the batch has them); "av_frames": AV partner frames v2 `(B, H, W, 3)` uint8
    (when it has them; `coincide.models.images_to_tensor` converts them on the device).
    """
    b = len(pairs.anchors)
    windows = pairs.anchors if pairs.aa is None else np.concatenate([pairs.anchors, pairs.aa])
    logmel = torch.from_numpy(store.logmel[windows]).unsqueeze(1)
    batch = {"audio": logmel[:b]}
    if pairs.aa is not None:
        batch["aa_audio"] = logmel[b:]
    if pairs.av is not None:
        batch["av_frames"] = torch.from_numpy(store.frames[pairs.av])
    return batch


class PairBatches(IterableDataset):
    """An endless stream of batches `sampler.batch(start)`, `sampler.batch(start + 1)`, ...

    Items are the dicts of `read_batch`, passed through `augment` when one is given (a
    `coincide.data.augment.BatchAugment`; None: as stored). With several DataLoader workers,
    worker w yields the batches whose number is w modulo the number of workers.
    """

    def __init__(
        self,
        store: FeatureStore,
        sampler: BatchSampler,
        start: int = 0,
        augment: Augment | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.sampler = sampler
        self.start = start
        self.augment = augment

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        number = self.start + worker
        while True:
            pairs = self.sampler.batch(number)
            batch = read_batch(self.store, pairs)
            yield batch if self.augment is None else self.augment(batch, pairs, number)
            number += workers


def batch_loader(dataset: PairBatches, workers: int, prefetch: int, pin_memory: bool) -> DataLoader:
    """A DataLoader over whole batches (no collation): worker processes read, the caller trains.

    pin_memory: page-locked host tensors for fast asynchronous copies to a CUDA device.
    """
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        prefetch_factor=prefetch if workers > 0 else None,
        pin_memory=pin_memory,
        persistent_workers=False,
        # Its own generator: otherwise each new loader draws from torch's global RNG, which a
        # resumed run would then draw at a different point than an uninterrupted one.
        generator=torch.Generator(),
    )
