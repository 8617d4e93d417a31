"""Coincidence pairs from the feature store: sampling rules (`pairs`) and streamed batches."""

from coincide.data.batches import PairBatches, batch_loader, read_batch
from coincide.data.pairs import (
    PairBatch,
    PairSampler,
    SamplerState,
    WindowTable,
    rank_share,
    split_media,
    validation_batches,
)

__all__ = [
    "PairBatch",
    "PairBatches",
    "PairSampler",
    "SamplerState",
    "WindowTable",
    "batch_loader",
    "rank_share",
    "read_batch",
    "split_media",
    "validation_batches",
]
