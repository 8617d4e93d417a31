"""Training-batch augmentation (`coincide.data.augment`) and the coincidence heads' dropout.

Each switch: off leaves the batch bitwise unchanged, on changes it in the way it says; the draws
are a pure function of the batch number (resuming stays exact, in worker processes too); the
held-out batches are never augmented; the config section is optional.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torchvision.transforms.v2 import functional as TF

from coincide.config.settings import config_from_dict, load_config, save_config
from coincide.data.augment import (
    AudioAugmentConfig,
    AugmentConfig,
    BatchAugment,
    ImageAugmentConfig,
    apply_gain,
    augment_images,
    background_gain,
    draw_filter,
    fill_bands,
    jitter_colours,
    magnitude,
    mix_background,
    shift_windows,
)
from coincide.data.batches import PairBatches, batch_loader, read_batch
from coincide.data.pairs import PairSampler, WindowTable, split_media, validation_batches
from coincide.errors import UserError
from coincide.models.heads import CoincidenceHead
from coincide.store.features import open_store
from coincide.store.writer import MediaRecord, StoreWriter
from coincide.train.checkpoint import build_models
from coincide.train.loop import _Run

torch.set_num_threads(1)

MEL, FRAMES, SIZE = 16, 24, 16
C = 0.01  # the store's log offset (synthetic stores: the frontend's default)
FLOOR = math.log(C)
# Media 0 has a single window (no neighbour to shift into); the others have 5.
WINDOWS = [1] + [5] * 10


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("augment") / "store"
    rng = np.random.default_rng(0)
    frontend = {"n_mels": MEL, "window_frames": FRAMES, "frame_size": SIZE}
    with StoreWriter(path, frontend, chunk_windows=16) as writer:
        for m, n in enumerate(WINDOWS):
            logmel = rng.normal(0.0, 1.5, (n, MEL, FRAMES)).astype(np.float32)
            logmel[:, :2] = FLOOR  # two silent mel bands: the log of the offset alone
            pictures = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
            writer.add(
                MediaRecord(
                    media_id=f"m{m:02d}",
                    media_path=f"/media/m{m:02d}.mp4",
                    size=100 + m,
                    mtime_ns=m,
                    duration_s=float(n),
                    logmel=logmel,
                    frames=pictures,
                    has_frame=np.ones(n, dtype=bool),
                    time_s=np.arange(n, dtype=np.float64) + 0.5,
                )
            )
    return path


@pytest.fixture(scope="module")
def store(store_path):
    return open_store(store_path)


@pytest.fixture(scope="module")
def table(store):
    return WindowTable(store.index)


def _sampler(table: WindowTable, batch_size: int = 4, media=None) -> PairSampler:
    media = np.arange(table.n_media) if media is None else media
    return PairSampler(table, ("aa", "av"), 10.0, batch_size, "windows", 0, 0, media)


def _augmenter(store, table, media=None, **switches) -> BatchAugment:
    audio = {k: v for k, v in switches.items() if k in AUDIO_KEYS}
    image = {k: v for k, v in switches.items() if k not in AUDIO_KEYS}
    cfg = AugmentConfig(AudioAugmentConfig(**audio), ImageAugmentConfig(**image))
    media = np.arange(table.n_media) if media is None else media
    return BatchAugment(cfg, store, table, media, seed=0)


AUDIO_KEYS = {f.name for f in dataclasses.fields(AudioAugmentConfig)}
# One setting per switch, with the batch keys it must change (the others stay as stored).
SWITCHES = {
    "time_shift": ({"time_shift": 6}, {"audio", "aa_audio"}),
    "gain_db": ({"gain_db": 6.0}, {"audio", "aa_audio"}),
    "freq_masks": ({"freq_masks": 2, "freq_mask_width": 4}, {"audio", "aa_audio"}),
    "time_masks": ({"time_masks": 2, "time_mask_width": 5}, {"audio", "aa_audio"}),
    "mix": ({"mix_prob": 1.0, "mix_snr_db": [0.0, 5.0]}, {"audio", "aa_audio"}),
    "filter": ({"filter_db": 6.0, "filter_bands": 3}, {"audio", "aa_audio"}),
    "crop_scale": ({"crop_scale": [0.3, 0.6]}, {"av_frames"}),
    "jitter": ({"jitter": 0.4}, {"av_frames"}),
    "rotate_deg": ({"rotate_deg": 20.0}, {"av_frames"}),
    "grayscale": ({"grayscale": 1.0}, {"av_frames"}),
    "hflip": ({"hflip": True}, {"av_frames"}),
}


def _stored(store, table, number: int = 0):
    pairs = _sampler(table).batch(number)
    return pairs, read_batch(store, pairs)


# ---------------------------------------------------------------------------------------------
# Off is the identity, on changes its own view


def test_every_switch_off_is_the_identity(store, table):
    augment = _augmenter(store, table)
    assert not augment.cfg.enabled
    pairs, batch = _stored(store, table)
    out = augment(batch, pairs, 0)
    assert out.keys() == batch.keys()
    for key in batch:
        assert torch.equal(out[key], batch[key]), key


@pytest.mark.parametrize("switch", SWITCHES)
def test_each_switch_changes_its_view_only_and_keeps_shapes(store, table, switch):
    settings, changed = SWITCHES[switch]
    augment = _augmenter(store, table, **settings)
    assert augment.cfg.enabled
    pairs, batch = _stored(store, table)
    out = augment(batch, pairs, 0)
    for key, value in batch.items():
        assert out[key].shape == value.shape and out[key].dtype == value.dtype, key
        assert out[key].is_contiguous()
        assert torch.equal(out[key], value) != (key in changed), key
    # Anchors and partners draw independently: x1 and x2 of one batch change differently.
    if "audio" in changed:
        assert not torch.equal(out["audio"] - batch["audio"], out["aa_audio"] - batch["aa_audio"])


def test_switches_are_validated_with_the_key_named(store, table):
    for bad, key in [
        ({"mix_snr_db": [20.0, 10.0]}, "augment.audio.mix_snr_db"),
        ({"mix_prob": 1.5}, "augment.audio.mix_prob"),
        ({"gain_db": -1.0}, "augment.audio.gain_db"),
        ({"filter_db": -1.0}, "augment.audio.filter_db"),
        ({"filter_bands": 1}, "augment.audio.filter_bands"),
    ]:
        with pytest.raises(UserError, match=key):
            AudioAugmentConfig(**bad)
    for bad, key in [
        ({"crop_scale": [0.0, 1.0]}, "augment.image.crop_scale"),
        ({"crop_scale": [0.5, 1.2]}, "augment.image.crop_scale"),
        ({"jitter": 1.0}, "augment.image.jitter"),
    ]:
        with pytest.raises(UserError, match=key):
            ImageAugmentConfig(**bad)
    # Sizes the store cannot hold.
    with pytest.raises(UserError, match="time_shift"):
        _augmenter(store, table, time_shift=FRAMES)
    with pytest.raises(UserError, match="freq_mask_width"):
        _augmenter(store, table, freq_masks=1, freq_mask_width=MEL + 1)


# ---------------------------------------------------------------------------------------------
# Audio operations


def test_a_shift_is_the_crop_of_the_window_and_its_neighbour():
    rng = np.random.default_rng(1)
    windows = torch.from_numpy(rng.normal(size=(3, 2, 8)).astype(np.float32))
    neighbours = torch.from_numpy(rng.normal(size=(3, 2, 8)).astype(np.float32))
    out = shift_windows(windows, neighbours, np.array([3, -2, 0]))
    assert torch.equal(out[0], torch.cat([windows[0], neighbours[0]], -1)[:, 3:11])  # next
    assert torch.equal(out[1], torch.cat([neighbours[1], windows[1]], -1)[:, 6:14])  # previous
    assert torch.equal(out[2], windows[2])


def test_the_loader_shifts_into_the_same_media_neighbours(store, table):
    shift = 6
    augment = _augmenter(store, table, time_shift=shift)
    position = np.empty(len(table), dtype=np.int64)
    position[table.window] = np.arange(len(table))
    moved = 0
    for number in range(12):
        pairs, batch = _stored(store, table, number)
        out = augment(batch, pairs, number)["audio"][:, 0].numpy()
        for row, window in enumerate(pairs.anchors):
            p = position[window]
            lo, hi = table.media_start[table.media[p]], table.media_end[table.media[p]]
            context = store.logmel[table.window[max(lo, p - 1) : min(hi, p + 2)]]
            joined = np.concatenate(list(context), axis=-1)  # [previous,] window[, next]
            first = FRAMES if p > lo else 0  # where the window itself starts in `joined`
            crops = {
                s: joined[:, first + s : first + s + FRAMES]
                for s in range(-shift, shift + 1)
                if 0 <= first + s <= joined.shape[-1] - FRAMES
            }
            found = [s for s, crop in crops.items() if np.array_equal(out[row], crop)]
            assert found, f"row {row} is no shift of window {window} inside its media"
            moved += found[0] != 0
    assert moved > 0
    # A window without neighbours (media 0 has one window) is left as it is.
    alone = np.array([table.window[table.media_start[0]]])
    single = augment.audio(
        torch.from_numpy(store.logmel[alone]).unsqueeze(1),
        alone,
        alone,
        np.random.default_rng(0),
    )
    assert torch.equal(single[:, 0], torch.from_numpy(store.logmel[alone]))


def test_gain_is_a_constant_shift_above_the_floor_and_none_on_it(store, table):
    gain_db = np.array([6.0, -6.0, 2.5])
    x = torch.full((3, 1, 4, 5), FLOOR)
    x[:, :, 2:] = torch.linspace(1.0, 4.0, 10).view(1, 1, 2, 5)
    out = apply_gain(x, gain_db, C)
    shift = torch.from_numpy(gain_db / 20.0 * math.log(10.0)).float().view(3, 1, 1, 1)
    a = torch.from_numpy(10 ** (gain_db / 20)).float().view(3, 1, 1, 1)
    torch.testing.assert_close(out, torch.log(a * (x.exp() - C).clamp(min=0) + C))
    loud = x >= 2.5  # well above the floor (e^2.5 = 12 >> C): m + C is m
    torch.testing.assert_close(out[loud], (x + shift).expand_as(x)[loud], atol=1e-3, rtol=0)
    torch.testing.assert_close(out[:, :, :2], x[:, :, :2])  # silence stays silence
    # Through the loader: one gain per window, within +-gain_db.
    max_db = 6.0
    pairs, batch = _stored(store, table)
    augmented = _augmenter(store, table, gain_db=max_db)(batch, pairs, 0)["audio"]
    loud = batch["audio"] > FLOOR + 6.0
    for row in range(len(batch["audio"])):
        diff = (augmented - batch["audio"])[row][loud[row]]
        assert diff.abs().max() <= max_db / 20 * math.log(10) + 1e-5
        torch.testing.assert_close(diff, diff.mean().expand_as(diff), atol=5e-3, rtol=0)
    floor = batch["audio"] == FLOOR
    torch.testing.assert_close(augmented[floor], batch["audio"][floor])


def test_the_equaliser_is_piecewise_linear_in_db_and_a_gain_per_band():
    gains = draw_filter(np.random.default_rng(0), 50, 3, 6.0, MEL)
    assert gains.shape == (50, MEL) and np.abs(gains).max() <= 6.0
    assert np.ptp(gains, axis=1).min() > 0  # never one flat gain for the whole window
    # Linear between the points 0, (MEL - 1) / 2 and MEL - 1: second differences vanish there.
    half = (MEL - 1) / 2
    for side in (np.arange(0, int(half)), np.arange(int(np.ceil(half)), MEL)):
        np.testing.assert_allclose(np.diff(gains[:, side], n=2, axis=1), 0.0, atol=1e-9)
    # Applied per band: band f of every frame gets the same gain, the floor stays the floor.
    x = torch.full((2, 1, MEL, FRAMES), FLOOR)
    x[:, :, 4:] = 3.0
    out = apply_gain(x, gains[:2], C)
    a = torch.from_numpy(10 ** (gains[:2] / 20)).float().view(2, 1, MEL, 1)
    torch.testing.assert_close(out, torch.log(a * (x.exp() - C).clamp(min=0) + C))
    torch.testing.assert_close(out[:, :, :4], x[:, :, :4])
    assert (out[:, :, 4:] == out[:, :, 4:, :1]).all()  # constant over time


def test_masks_fill_exactly_the_drawn_bands_with_the_window_mean():
    x = torch.arange(2 * 6 * 7, dtype=torch.float32).view(2, 1, 6, 7)
    mean = x.mean(dim=(1, 2, 3))
    out = fill_bands(x, np.array([[1, 4], [0, 0]]), np.array([[2, 1], [0, 3]]), axis=-2)
    bands = [{1, 2, 4}, {0, 1, 2}]
    for row in range(2):
        for mel in range(6):
            expected = mean[row].expand(7) if mel in bands[row] else x[row, 0, mel]
            assert torch.equal(out[row, 0, mel], expected)
    out = fill_bands(x, np.array([[5], [2]]), np.array([[2], [0]]), axis=-1)
    assert torch.equal(out[0, 0, :, 5:], mean[0].expand(6, 2))
    assert torch.equal(out[0, 0, :, :5], x[0, 0, :, :5]) and torch.equal(out[1], x[1])


@pytest.mark.parametrize(("axis", "masks", "width"), [(-2, 2, 4), (-1, 3, 5)])
def test_the_loader_masks_at_most_the_counted_bands(store, table, axis, masks, width):
    name = "freq" if axis == -2 else "time"
    augment = _augmenter(store, table, **{f"{name}_masks": masks, f"{name}_mask_width": width})
    filled = 0
    for number in range(5):
        pairs, batch = _stored(store, table, number)
        out = augment(batch, pairs, number)["audio"][:, 0]
        x = batch["audio"][:, 0]
        along = 0 if axis == -2 else 1  # the dimension of `(mel, time)` that is masked
        for row in range(len(x)):
            lines = torch.nonzero((out[row] != x[row]).any(dim=1 - along)).flatten()
            # Every changed mel bin (frame) is filled whole with the window's mean, in at most
            # `masks` runs, `masks * width` lines in all (two masks may touch or overlap).
            cut = out[row].index_select(along, lines)
            torch.testing.assert_close(cut, x[row].mean().expand_as(cut), atol=1e-6, rtol=0)
            gaps = np.flatnonzero(np.diff(lines.numpy()) > 1)
            assert (len(gaps) + 1 if len(lines) else 0) <= masks
            assert len(lines) <= masks * width
            filled += len(lines)
    assert filled > 0


def test_mixing_adds_the_background_at_the_drawn_snr():
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.normal(0, 1.5, (3, 1, 4, 6)).astype(np.float32))
    y = torch.from_numpy(rng.normal(0, 1.5, (3, 1, 4, 6)).astype(np.float32))
    snr = np.array([0.0, 10.0, -5.0])
    g = background_gain(x, y, snr, C)
    m_x, m_y = magnitude(x, C), magnitude(y, C)
    measured = 10 * torch.log10(m_x.square().sum((1, 2, 3)) / (g**2 * m_y.square().sum((1, 2, 3))))
    torch.testing.assert_close(measured, torch.from_numpy(snr).float(), atol=1e-4, rtol=0)
    out = mix_background(x, y, g, C)
    g4 = g.view(3, 1, 1, 1)
    torch.testing.assert_close(out, torch.log(torch.sqrt(m_x**2 + (g4 * m_y) ** 2) + C))
    assert (out >= x).all()  # adding sound never lowers a bin
    assert (out >= torch.log(g4 * m_y + C) - 1e-5).all()
    # g = 0 (no background) is the identity, bit for bit.
    assert torch.equal(mix_background(x, y, torch.zeros(3), C), x)
    assert torch.equal(background_gain(x, torch.full_like(y, FLOOR), snr, C), torch.zeros(3))


def test_backgrounds_come_from_allowed_media_outside_the_batch(store, table):
    train, _ = split_media(table, 0.2, 0)
    augment = _augmenter(store, table, media=train, mix_prob=1.0)
    media_of = augment.media_of_window
    for number in range(20):
        pairs = _sampler(table, media=train).batch(number)
        batch_media = set(media_of[np.concatenate([pairs.anchors, pairs.aa])].tolist())
        source = augment._backgrounds(np.random.default_rng(number), pairs.anchors, pairs.anchors)
        assert not set(media_of[source].tolist()) & batch_media
        assert set(media_of[source].tolist()) <= set(train.tolist())
    # When the batch holds every allowed media: any but the row's own.
    usable = _sampler(table, media=train).eligible_media
    augment = _augmenter(store, table, media=usable, mix_prob=1.0)
    pairs = _sampler(table, media=usable, batch_size=len(usable)).batch(0)
    source = augment._backgrounds(np.random.default_rng(0), pairs.anchors, pairs.anchors)
    assert (media_of[source] != media_of[pairs.anchors]).all()


# ---------------------------------------------------------------------------------------------
# Image operations


def _images(fill) -> torch.Tensor:
    frames = torch.zeros((8, SIZE, SIZE, 3), dtype=torch.uint8)
    frames[:] = fill
    return frames


def test_a_crop_zooms_into_the_frame():
    ramp = torch.arange(SIZE, dtype=torch.uint8) * 16  # red grows left to right
    frames = _images(0)
    frames[..., 0] = ramp.view(1, 1, SIZE)
    out = augment_images(
        frames, ImageAugmentConfig(crop_scale=[0.25, 0.3]), np.random.default_rng(0)
    )
    span = out[..., 0].amax(dim=2).float() - out[..., 0].amin(dim=2).float()
    assert (span < 0.8 * float(ramp.max())).all()  # a zoom spreads a narrower part of the ramp
    assert (out[:, :, 1:, 0].int() >= out[:, :, :-1, 0].int() - 1).all()  # still left to right


def test_jitter_scales_a_grey_frame_within_its_strength():
    strength = 0.3
    out = augment_images(
        _images(100), ImageAugmentConfig(jitter=strength), np.random.default_rng(0)
    )
    per_image = out.view(8, -1).float()
    assert (per_image == per_image[:, :1]).all()  # grey stays uniform and grey
    level = per_image[:, 0]
    assert (level >= math.floor(100 * (1 - strength))).all()
    assert (level <= math.ceil(100 * (1 + strength))).all()
    assert len(set(level.tolist())) > 1


def test_grayscale_turns_about_its_share_of_frames_into_their_luma():
    rng = np.random.default_rng(5)
    frames = torch.from_numpy(rng.integers(0, 256, (400, 4, 4, 3), dtype=np.uint8))
    out = augment_images(frames, ImageAugmentConfig(grayscale=0.3), np.random.default_rng(1))
    gray = (out[..., 0] == out[..., 1]).all(dim=(1, 2)) & (out[..., 1] == out[..., 2]).all(
        dim=(1, 2)
    )
    assert 0.22 < gray.float().mean() < 0.38
    luma = TF.rgb_to_grayscale(frames[gray].permute(0, 3, 1, 2), num_output_channels=3)
    assert torch.equal(out[gray], luma.permute(0, 2, 3, 1))
    assert torch.equal(out[~gray], frames[~gray])  # the rest as they were
    never = augment_images(frames, ImageAugmentConfig(grayscale=0.0), np.random.default_rng(1))
    assert torch.equal(never, frames)


def test_jitter_is_torchvisions_three_adjustments_where_nothing_clips():
    rng = np.random.default_rng(3)
    images = torch.from_numpy(rng.integers(90, 150, (4, 3, SIZE, SIZE), dtype=np.uint8))
    factors = rng.uniform(0.85, 1.15, (4, 3))
    out = jitter_colours(images, factors)
    for image, (b, c, s), got in zip(images, factors, out, strict=True):
        expected = TF.adjust_saturation(
            TF.adjust_contrast(TF.adjust_brightness(image, b), c), s
        )  # each call truncates to uint8: up to 1 per call, 3 in all
        assert (got.int() - expected.int()).abs().max() <= 3


def test_rotation_turns_the_frame_and_blackens_corners():
    cfg = ImageAugmentConfig(rotate_deg=30.0)
    out = augment_images(_images(200), cfg, np.random.default_rng(0))
    assert (out[:, SIZE // 2, SIZE // 2] == 200).all()  # the centre stays
    assert (out[:, 0, 0] < 200).sum() >= 6  # corners rotate out (|angle| > ~3 degrees)


def test_hflip_off_never_mirrors_and_on_mirrors_about_half():
    frames = _images(0)
    frames[:, :, SIZE // 2 :] = 255  # bright right half
    on_all = ImageAugmentConfig(crop_scale=[0.7, 1.0], jitter=0.2, rotate_deg=5.0)
    for seed in range(4):
        out = augment_images(frames, on_all, np.random.default_rng(seed)).float()
        left, right = out[:, :, : SIZE // 2].mean((1, 2, 3)), out[:, :, SIZE // 2 :].mean((1, 2, 3))
        assert (right > left).all()
    flips = augment_images(frames, ImageAugmentConfig(hflip=True), np.random.default_rng(0))
    mirrored = [torch.equal(f, frames[0].flip(1)) for f in flips]
    assert all(m or torch.equal(f, frames[0]) for m, f in zip(mirrored, flips, strict=True))
    assert 0 < sum(mirrored) < len(flips)


# ---------------------------------------------------------------------------------------------
# Determinism and where augmentation runs

ALL_ON = {
    "time_shift": 6,
    "gain_db": 6.0,
    "freq_masks": 1,
    "freq_mask_width": 3,
    "time_masks": 1,
    "time_mask_width": 4,
    "mix_prob": 0.5,
    "crop_scale": [0.6, 1.0],
    "jitter": 0.3,
    "rotate_deg": 10.0,
}


def test_the_augmented_stream_is_a_pure_function_of_the_batch_number(store, table):
    sampler = _sampler(table)

    def take(start: int, workers: int, n: int) -> list[dict[str, torch.Tensor]]:
        augment = _augmenter(store, table, **ALL_ON)  # a fresh one: no state carried over
        dataset = PairBatches(store, sampler, start, augment)
        loader = iter(batch_loader(dataset, workers, 2, False))
        return [next(loader) for _ in range(n)]

    straight = take(0, 0, 6)
    for expected, batch in zip(straight[4:], take(4, 0, 2), strict=True):  # resumed at batch 4
        assert all(torch.equal(expected[k], batch[k]) for k in expected)
    for expected, batch in zip(straight, take(0, 2, 6), strict=True):  # 2 worker processes
        assert all(torch.equal(expected[k], batch[k]) for k in expected)
    # Another batch number draws differently, even over the same windows.
    pairs, batch = _stored(store, table, 0)
    augment = _augmenter(store, table, **ALL_ON)
    first, again, other = (
        augment(batch, pairs, 0),
        augment(batch, pairs, 0),
        augment(batch, pairs, 1),
    )
    for key in batch:
        assert torch.equal(first[key], again[key]) and not torch.equal(first[key], other[key])


def test_held_out_batches_are_read_as_stored(store, table):
    val = validation_batches(table, np.arange(table.n_media), ("aa", "av"), 10.0, 4, 8, 0)
    augment = _augmenter(store, table, **ALL_ON)
    for pairs in val:
        batch = read_batch(store, pairs)
        assert torch.equal(batch["audio"][:, 0], torch.from_numpy(store.logmel[pairs.anchors]))
        assert torch.equal(batch["av_frames"], torch.from_numpy(store.frames[pairs.av]))
        assert not torch.equal(augment(batch, pairs, 0)["audio"], batch["audio"])


TINY = [
    "model.audio.arch=tiny",
    "model.image.arch=tiny",
    "model.audio.embed_dim=8",
    "model.image.embed_dim=8",
    "model.coincidence_hidden=16",
    "clustering.K=6",
    "data.batch_size=4",
    "data.workers=0",
    "curriculum.stages=[av]",
    "curriculum.max_steps=2",
    "curriculum.plateau.eval_every=2",
    "optim.warmup_steps=0",
    "eval.val_pairs=4",
    "log.every=1",
    "log.checkpoint_every=2",
    "log.progress=false",
]


def test_training_augments_its_batches_and_not_the_held_out_ones(store_path, tmp_path):
    on = [f"augment.audio.{k}={v}" for k, v in ALL_ON.items() if k in AUDIO_KEYS]
    on += ["augment.image.crop_scale=[0.6, 1.0]", "augment.image.jitter=0.3"]
    logs = {}
    for name, overrides in [("off", []), ("on", on)]:
        cfg = load_config(["small"], TINY + overrides)
        _Run(cfg, store_path, tmp_path / name, torch.device("cpu")).train()
        logs[name] = pd.read_csv(tmp_path / name / "train_log.csv")
    val = {name: log[log["split"] == "val"].set_index("stage_step") for name, log in logs.items()}
    # Same initial weights, held-out pairs read as stored: the first measurement is identical.
    assert val["on"].loc[0, "total"] == val["off"].loc[0, "total"]
    # Trained on augmented batches, the weights (and so the later measurement) differ.
    assert val["on"].loc[2, "total"] != val["off"].loc[2, "total"]


# ---------------------------------------------------------------------------------------------
# Configuration and dropout


def test_the_section_round_trips_and_old_configs_without_it_load(tmp_path):
    laptop = load_config(["laptop"])
    assert laptop.augment.audio.mix_snr_db == [5.0, 20.0] and not laptop.augment.image.hflip
    save_config(laptop, tmp_path / "config.yaml")
    assert load_config([str(tmp_path / "config.yaml")]) == laptop
    # A RUN/config.yaml written before augmentation and head dropout existed.
    old = yaml.safe_load((tmp_path / "config.yaml").read_text(encoding="utf-8"))
    del old["augment"], old["model"]["head_dropout"]
    cfg = config_from_dict(old)
    assert cfg.augment == AugmentConfig() and not cfg.augment.enabled
    assert cfg.model.head_dropout == 0.0
    # A partial section: the keys it leaves out are off.
    partial = load_config(["small"], ["augment={audio: {gain_db: 3}}"])
    assert partial.augment.audio.gain_db == 3.0 and partial.augment.audio.time_shift == 0
    assert not partial.augment.image.enabled
    for bad in ["augment.audio.nope=1", "model.head_dropout=1.0"]:
        with pytest.raises(UserError, match="nope|head_dropout"):
            load_config(["small"], [bad])


def test_head_dropout_drops_units_in_training_only():
    torch.manual_seed(0)
    head = CoincidenceHead(8, 64, dropout=0.5)
    plain = CoincidenceHead(8, 64)
    plain.load_state_dict(head.state_dict())  # dropout has no parameters
    e1, e2 = torch.randn(5, 8), torch.randn(5, 8)
    head.train()
    assert not torch.equal(head(e1, e2), head(e1, e2))
    assert not torch.equal(head.pairwise_logits(e1, e2), head.pairwise_logits(e1, e2))
    head.eval()
    assert torch.equal(head(e1, e2), plain.eval()(e1, e2))
    torch.testing.assert_close(head.pairwise_logits(e1, e2), plain.pairwise_logits(e1, e2))
    # The blocked pairwise path recomputes each block in backward (activation checkpointing):
    # it must drop the same units then, so its gradient equals the plain blocks' gradient.
    head.train()
    e1.requires_grad_(True)
    torch.manual_seed(1)
    blocked = head.pairwise_logits(e1, e2, max_elements=2 * 5 * 64)  # blocks of 2 rows
    (grad_blocked,) = torch.autograd.grad(blocked.sum(), e1)
    torch.manual_seed(1)
    weight, bias = head.hidden.weight, head.hidden.bias
    e1_part = torch.nn.functional.linear(e1, weight[:, :8], bias)
    e2_part = torch.nn.functional.linear(e2, weight[:, 8:])
    plain_blocks = torch.cat([head._pair_block(e1_part[i : i + 2], e2_part) for i in (0, 2, 4)])
    (grad_plain,) = torch.autograd.grad(plain_blocks.sum(), e1)
    assert torch.equal(blocked, plain_blocks)
    torch.testing.assert_close(grad_blocked, grad_plain)


def test_build_models_gives_the_heads_the_configured_dropout():
    cfg = load_config(["small"], ["model.head_dropout=0.3"])
    models = build_models(cfg, ["aa_head", "av_head"])
    assert models["aa_head"].dropout.p == models["av_head"].dropout.p == 0.3
    assert build_models(load_config(["small"]), ["av_head"])["av_head"].dropout.p == 0.0


def test_build_models_gives_the_configured_coincidence_head():
    from coincide.models.heads import CosineCoincidenceHead

    cfg = load_config(["small"], ["model.coincidence_head=cosine"])
    models = build_models(cfg, ["aa_head", "av_head"])
    assert isinstance(models["aa_head"], CosineCoincidenceHead)
    assert isinstance(models["av_head"], CosineCoincidenceHead)
    assert isinstance(build_models(load_config(["small"]), ["aa_head"])["aa_head"], CoincidenceHead)
    with pytest.raises(UserError, match="model.coincidence_head"):
        load_config(["small"], ["model.coincidence_head=dot"])
