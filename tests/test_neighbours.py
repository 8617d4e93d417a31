"""Neighbour batches (`data.neighbour_batches`): batches of one media and its nearest media
under f, on the traceable store of test_pairs (window k of media m holds m * 100 + k)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.test_pairs import ALL_MEDIA, _media_of, store_path, table  # noqa: F401 (fixtures)
from torch import nn

from coincide.data.pairs import PairSampler
from coincide.store.features import open_store
from coincide.train.neighbours import media_embeddings, nearest_media, refresh_neighbours

torch.set_num_threads(1)


class MeanLevel(nn.Module):
    """A stand-in for f: a window's embedding is (its mean level / 100, 1), so a media's mean
    embedding orders media by their code (window k of media m holds m * 100 + k)."""

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        level = logmel.mean(dim=(1, 2, 3)) / 100.0
        return torch.stack([level, torch.ones_like(level)], dim=1)


def test_nearest_media_lists_the_most_similar_others_first():
    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.7, 0.7]], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    near = nearest_media(vectors, 2)
    assert near.tolist() == [[1, 4], [0, 4], [3, 4], [2, 4], [1, 3]]
    assert nearest_media(vectors, 10).shape == (5, 4)  # never the row itself


def test_media_embeddings_average_spread_windows_of_each_media(store_path, table):  # noqa: F811
    sampler = PairSampler(table, ("aa",), 10.0, 3, "windows", 0, 0, ALL_MEDIA)
    emb = media_embeddings(MeanLevel(), open_store(store_path), sampler, torch.device("cpu"))
    assert emb.shape == (len(sampler.eligible_media), 2)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    # Larger media codes have larger mean levels, so the first coordinate grows with the code.
    assert np.all(np.diff(emb[:, 0]) > 0)
    owner, windows = sampler.spread_windows(4)
    assert np.bincount(owner).max() == 4 and len(np.unique(windows)) == len(windows)


@pytest.mark.parametrize("pool", [1.0, 2.0])
def test_neighbour_batches_hold_one_media_and_its_neighbours(store_path, table, pool):  # noqa: F811
    sampler = PairSampler(table, ("aa", "av"), 10.0, 3, "windows", 0, 0, ALL_MEDIA)
    refresh_neighbours(sampler, MeanLevel(), open_store(store_path), torch.device("cpu"), 1.0, pool)
    rows = {
        int(sampler.eligible_media[i]): set(sampler.eligible_media[r].tolist())
        for i, r in enumerate(sampler.neighbours)
    }
    assert all(len(r) == int(np.ceil(pool * 3)) for r in rows.values())
    for number in range(30):
        batch = sampler.batch(number)
        media = set(_media_of(table, batch.anchors).tolist())
        assert len(media) == 3  # distinct media, as in every batch
        assert any(media - {m} <= rows[m] for m in media)  # one media and its neighbours
        assert (batch.anchors == sampler.batch(number).anchors).all()  # deterministic
    # fraction 0 or no neighbours: the plain draw, batch for batch.
    plain = PairSampler(table, ("aa", "av"), 10.0, 3, "windows", 0, 0, ALL_MEDIA)
    sampler.set_neighbours(sampler.neighbours, 0.0)
    assert all((sampler.batch(n).anchors == plain.batch(n).anchors).all() for n in range(5))


def test_a_neighbour_row_shorter_than_the_batch_is_filled_at_random(table):  # noqa: F811
    sampler = PairSampler(table, ("aa",), 10.0, 5, "windows", 0, 0, ALL_MEDIA)
    n = len(sampler.eligible_media)
    sampler.set_neighbours((np.arange(n)[:, None] + 1) % n, 1.0)  # one neighbour each
    for number in range(10):
        assert len(set(_media_of(table, sampler.batch(number).anchors).tolist())) == 5
    with pytest.raises(ValueError, match="rows"):
        sampler.set_neighbours(np.zeros((n + 1, 2), dtype=np.int64), 1.0)
