"""Coincidence pair sampling and batches, on a real feature store written by the store writer.

The store's values encode where they come from: log-mel window k of media m is filled with
m * 100 + k and its frame with k, so a batch read back can be traced to its windows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from coincide.data.batches import PairBatches, batch_loader, read_batch
from coincide.data.pairs import (
    PairSampler,
    WindowTable,
    eligible_anchors,
    rank_share,
    split_media,
    validation_batches,
)
from coincide.errors import UserError
from coincide.store.features import open_store
from coincide.store.writer import MediaRecord, StoreWriter

torch.set_num_threads(1)

MEL, FRAMES, SIZE = 4, 6, 8
# (windows, frames): "all", "none" (audio-only file) or "first" (frames for the first half).
MEDIA = [
    (2, "all"),
    (3, "none"),
    (5, "all"),
    (7, "first"),
    (12, "all"),
    (1, "all"),  # a single window: never an AA anchor
    (20, "all"),
    (4, "none"),
    (9, "all"),
    (6, "all"),
    (15, "first"),
    (3, "all"),
]


def _record(m: int, n: int, frames: str) -> MediaRecord:
    has_frame = {"all": np.ones(n, bool), "none": np.zeros(n, bool)}.get(
        frames, np.arange(n) < (n + 1) // 2
    )
    logmel = np.broadcast_to(
        (m * 100 + np.arange(n, dtype=np.float32))[:, None, None], (n, MEL, FRAMES)
    )
    pictures = None
    if frames != "none":
        pictures = np.broadcast_to(
            np.arange(n, dtype=np.uint8)[:, None, None, None], (n, SIZE, SIZE, 3)
        ).copy()
    return MediaRecord(
        media_id=f"m{m:02d}",
        media_path=f"/media/m{m:02d}.mp4",
        size=100 + m,
        mtime_ns=m,
        duration_s=float(n),
        logmel=logmel.copy(),
        frames=pictures,
        has_frame=has_frame,
        time_s=np.arange(n, dtype=np.float64) + 0.5,  # window centres, as ingest writes them
    )


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "store"
    frontend = {"n_mels": MEL, "window_frames": FRAMES, "frame_size": SIZE}
    with StoreWriter(path, frontend, chunk_windows=16) as writer:  # several chunks
        # Write the media in a scrambled order: the table must not rely on the store's order.
        for m in [5, 0, 11, 3, 8, 1, 10, 2, 7, 4, 9, 6]:
            writer.add(_record(m, *MEDIA[m]))
    return path


@pytest.fixture(scope="module")
def table(store_path: Path) -> WindowTable:
    return WindowTable(open_store(store_path).index)


def _media_of(table: WindowTable, windows: np.ndarray) -> np.ndarray:
    inverse = np.empty_like(table.window)
    inverse[table.window] = np.arange(len(table.window))
    return table.media[inverse[windows]]


ALL_MEDIA = np.arange(len(MEDIA))


@pytest.mark.parametrize("delta_t", [1.0, 3.0, 10.0])
@pytest.mark.parametrize("kinds", [("aa",), ("av",), ("aa", "av")])
def test_pairs_coincide_within_delta_t_and_batches_hold_distinct_media(
    store_path, table, kinds, delta_t
):
    index = open_store(store_path).index
    has_frame, times = index["has_frame"].to_numpy(), index["time_s"].to_numpy()
    sampler = PairSampler(table, kinds, delta_t, 5, "windows", seed=3, stream=0, media=ALL_MEDIA)
    for number in range(60):
        batch = sampler.batch(number)
        anchor_media = _media_of(table, batch.anchors)
        assert len(set(anchor_media.tolist())) == 5  # one pair per media
        t1 = times[batch.anchors]
        if "aa" in kinds:
            assert batch.aa is not None
            assert (_media_of(table, batch.aa) == anchor_media).all()
            assert (batch.aa != batch.anchors).all()
            assert (np.abs(times[batch.aa] - t1) <= delta_t + 1e-6).all()
        else:
            assert batch.aa is None
        if "av" in kinds:
            assert batch.av is not None
            assert has_frame[batch.av].all()
            assert (_media_of(table, batch.av) == anchor_media).all()
            if delta_t <= 1.0:  # overlapping frames: the anchor window's own frame
                assert (batch.av == batch.anchors).all()
            else:
                assert (np.abs(times[batch.av] - t1) <= delta_t + 1e-6).all()
        else:
            assert batch.av is None


def test_eligible_anchors_follow_the_definitions(table):
    def media_of_anchors(kinds, delta_t):
        positions = eligible_anchors(table, kinds, delta_t, ALL_MEDIA)
        return sorted(set(table.media[positions].tolist()))

    # AA needs a second window: the one-window media 5 never anchors.
    assert media_of_anchors(("aa",), 10.0) == [m for m in ALL_MEDIA if MEDIA[m][0] >= 2]
    # AV needs a frame: the audio-only media 1 and 7 never anchor.
    assert media_of_anchors(("av",), 10.0) == [m for m in ALL_MEDIA if MEDIA[m][1] != "none"]
    # With overlapping frames, only windows that have a frame anchor an AV pair.
    positions = eligible_anchors(table, ("av",), 1.0, ALL_MEDIA)
    assert table.has_frame[positions].all()
    assert len(positions) == int(table.has_frame.sum())
    # Media 3 (7 windows, frames on the first 4 at t = 0.5..3.5): with delta_t = 2 its windows
    # at t <= 5.5 reach a frame, the one at 6.5 does not.
    positions = eligible_anchors(table, ("av",), 2.0, np.array([3]))
    assert table.time[positions].tolist() == [0.5, 1.5, 2.5, 3.5, 4.5, 5.5]


def test_batches_are_a_deterministic_function_of_seed_stream_rank_and_number(table):
    def sampler(seed=0, stream=0, rank=0):
        return PairSampler(table, ("aa", "av"), 10.0, 4, "windows", seed, stream, ALL_MEDIA, rank)

    first, again = sampler().batch(7), sampler().batch(7)
    for a, b in [(first.anchors, again.anchors), (first.aa, again.aa), (first.av, again.av)]:
        np.testing.assert_array_equal(a, b)

    def anchors(s, numbers=range(20)):
        return np.concatenate([s.batch(n).anchors for n in numbers])

    base = anchors(sampler())
    assert not np.array_equal(base, anchors(sampler(seed=1)))
    assert not np.array_equal(base, anchors(sampler(stream=1)))
    assert not np.array_equal(base, anchors(sampler(rank=1)))
    assert not np.array_equal(sampler().batch(0).anchors, sampler().batch(1).anchors)


def test_anchor_frequencies_are_uniform_over_windows_or_over_media(table):
    n = 4000
    eligible = eligible_anchors(table, ("aa",), 10.0, ALL_MEDIA)
    counts = np.bincount(table.media[eligible], minlength=len(MEDIA))
    for weighting, expected in [
        ("windows", counts / counts.sum()),
        ("media", (counts > 0) / (counts > 0).sum()),
    ]:
        sampler = PairSampler(table, ("aa",), 10.0, 1, weighting, 0, 0, ALL_MEDIA)
        drawn = np.concatenate([sampler.batch(i).anchors for i in range(n)])
        observed = np.bincount(_media_of(table, drawn), minlength=len(MEDIA)) / n
        np.testing.assert_allclose(observed, expected, atol=0.02)
        if weighting == "windows":
            # ... and uniform over the windows inside the largest media (20 windows).
            inside = drawn[_media_of(table, drawn) == 6]
            per_window = np.bincount(inside - inside.min(), minlength=20) / len(inside)
            np.testing.assert_allclose(per_window, 1 / 20, atol=0.025)


def test_a_batch_of_every_media_and_too_few_media(table):
    usable = eligible_anchors(table, ("aa",), 10.0, ALL_MEDIA)
    n_usable = len(np.unique(table.media[usable]))
    sampler = PairSampler(table, ("aa",), 10.0, n_usable, "windows", 0, 0, ALL_MEDIA)
    for number in range(5):  # every batch must find the rare media too
        assert sorted(_media_of(table, sampler.batch(number).anchors)) == sorted(
            np.unique(table.media[usable])
        )
    with pytest.raises(UserError, match="lower data.batch_size"):
        PairSampler(table, ("aa",), 10.0, n_usable + 1, "windows", 0, 0, ALL_MEDIA)


def test_held_out_media_ranks_and_validation_pairs(table):
    train, val = split_media(table, 0.2, seed=0)
    assert len(val) == 2 and len(train) == len(MEDIA) - 2
    assert not set(train) & set(val)
    np.testing.assert_array_equal(split_media(table, 0.2, seed=0)[1], val)  # same seed, same
    shares = [rank_share(train, r, 3) for r in range(3)]
    assert sorted(np.concatenate(shares).tolist()) == sorted(train.tolist())
    assert not set(shares[0]) & set(shares[1])

    held_out = np.array([m for m in ALL_MEDIA if MEDIA[m][1] == "all"][:3])
    batches = validation_batches(table, held_out, ("av",), 10.0, 8, 7, seed=0)
    assert [len(b.anchors) for b in batches] == [3, 3, 3]  # min(B, usable media), ceil(7 / 3)
    for batch in batches:
        assert set(_media_of(table, batch.anchors).tolist()) == set(held_out.tolist())
    again = validation_batches(table, held_out, ("av",), 10.0, 8, 7, seed=0)
    for a, b in zip(batches, again, strict=True):
        np.testing.assert_array_equal(a.av, b.av)
    # Held-out media without frames cannot give AV pairs: no validation, no error.
    assert validation_batches(table, np.array([1, 7]), ("av",), 10.0, 8, 7, seed=0) == []


def test_read_batch_returns_the_windows_and_frames_of_the_pairs(store_path, table):
    store = open_store(store_path)
    sampler = PairSampler(table, ("aa", "av"), 10.0, 4, "windows", 0, 0, ALL_MEDIA)
    pairs = sampler.batch(0)
    batch = read_batch(store, pairs)
    assert batch["audio"].shape == (4, 1, MEL, FRAMES) and batch["audio"].dtype == torch.float32
    assert batch["aa_audio"].shape == (4, 1, MEL, FRAMES)
    assert (
        batch["av_frames"].shape == (4, SIZE, SIZE, 3) and batch["av_frames"].dtype == torch.uint8
    )
    index = store.index
    for row, window in enumerate(pairs.anchors):
        media = int(index["media_id"].iat[window][1:])
        k = int(index["time_s"].iat[window] - 0.5)
        assert float(batch["audio"][row, 0, 0, 0]) == media * 100 + k
    frame_k = (index["time_s"].to_numpy()[pairs.av] - 0.5).astype(int)
    np.testing.assert_array_equal(batch["av_frames"][:, 0, 0, 0].numpy(), frame_k)


def test_the_stream_resumes_at_a_batch_number_whatever_the_workers(store_path, table):
    store = open_store(store_path)
    sampler = PairSampler(table, ("aa", "av"), 10.0, 3, "windows", 0, 0, ALL_MEDIA)

    def take(start: int, workers: int, n: int) -> list[torch.Tensor]:
        loader = iter(batch_loader(PairBatches(store, sampler, start), workers, 2, False))
        return [next(loader)["audio"] for _ in range(n)]

    straight = take(0, 0, 8)
    for expected, batch in zip(straight[:8], take(0, 2, 8), strict=True):
        assert torch.equal(expected, batch)  # 2 worker processes, same order
    for expected, batch in zip(straight[5:], take(5, 0, 3), strict=True):
        assert torch.equal(expected, batch)  # resumed at batch 5: the same continuation
