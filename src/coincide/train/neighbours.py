"""Neighbour batches (`data.neighbour_batches`): batches of media that f finds alike.

The coincidence losses take their negatives from the batch. Drawn at random, most negatives
differ from the anchor in what is easiest to tell apart (on our benchmarks the place, its
ambience and light), and the networks learn that first and little else. Hard negatives
(`curriculum.hard_negatives`) weight the few alike negatives a random batch holds; twice the
batch holds twice as many of them and measured better (benchmarks/README.md, "Twice the
batch"). A neighbour batch makes all of them alike: one media drawn at random and B - 1 drawn
from its nearest media under f (the mean of a few of its windows' embeddings, cosine), so that
coincidence must be told by what differs among similar media. No label is read. The neighbours
are recomputed from the current f every `data.neighbour_refresh` steps and at the start of each
stage (and of a resumed run, from the weights it resumes with).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from coincide.data.pairs import PairSampler
from coincide.models.embed_store import evaluating
from coincide.store.features import FeatureStore

WINDOWS_PER_MEDIA = 4
CHUNK = 512


def media_embeddings(
    encoder: nn.Module,
    store: FeatureStore,
    sampler: PairSampler,
    device: torch.device,
    windows_per_media: int = WINDOWS_PER_MEDIA,
) -> np.ndarray:
    """`(n, d)` unit vectors, row i the mean f-embedding of up to `windows_per_media` evenly
    spaced eligible windows of `sampler.eligible_media[i]`."""
    owner, windows = sampler.spread_windows(windows_per_media)
    parts = []
    with evaluating(encoder), torch.inference_mode():
        for start in range(0, len(windows), CHUNK):
            logmel = torch.from_numpy(store.logmel[windows[start : start + CHUNK]])
            parts.append(encoder(logmel.unsqueeze(1).to(device)).float().cpu())
    embeddings = torch.cat(parts)
    sums = torch.zeros(len(sampler.eligible_media), embeddings.shape[1])
    sums.index_add_(0, torch.from_numpy(owner), embeddings)
    return torch.nn.functional.normalize(sums, dim=1).numpy()


def nearest_media(embeddings: np.ndarray, k: int) -> np.ndarray:
    """`(n, min(k, n - 1))` indices of each row's nearest other rows by cosine, nearest first."""
    n = len(embeddings)
    k = min(k, n - 1)
    vectors = torch.from_numpy(np.ascontiguousarray(embeddings))
    rows = []
    for start in range(0, n, CHUNK):
        similarity = vectors[start : start + CHUNK] @ vectors.T
        own = torch.arange(start, min(start + CHUNK, n))
        similarity[torch.arange(len(own)), own] = -math.inf
        rows.append(similarity.topk(k, dim=1).indices)
    return torch.cat(rows).numpy().astype(np.int64)


def refresh_neighbours(
    sampler: PairSampler,
    encoder: nn.Module,
    store: FeatureStore,
    device: torch.device,
    fraction: float,
    pool: float,
) -> None:
    """Recompute the sampler's neighbours from f as it is now (`PairSampler.set_neighbours`)."""
    embeddings = media_embeddings(encoder, store, sampler, device)
    k = math.ceil(pool * sampler.batch_size)
    sampler.set_neighbours(nearest_media(embeddings, k), fraction)
