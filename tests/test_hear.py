"""`coincide.hear`: the HEAR 2021 common API over a tiny run folder and its exported folder.

The checks follow hearbenchmark.com/hear-api.html and what its validator (hear-validator)
checks: a torch Module with int sizes, float32 outputs of the promised shapes, timestamps in
milliseconds at regular intervals from the start to the end of the audio; and beyond it, the
values: each timestamp embedding is f of the window centred on its timestamp, cut here by hand
from the unpadded audio, and a scene embedding is the mean over 1-second windows that
`SoundModel.embed` gives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import coincide.hear as hear
from coincide.config.settings import load_config
from coincide.errors import UserError
from coincide.media.frontend import WINDOW_SAMPLES, logmel_windows
from coincide.models.inference import SoundModel, load_model
from coincide.stages.export import export_model
from coincide.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    build_models,
    save_checkpoint,
)

torch.set_num_threads(1)
RATE = 16000


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with a tiny f (d = 128) in the training checkpoint format."""
    folder = tmp_path_factory.mktemp("hear") / "run"
    torch.manual_seed(0)
    cfg = load_config(["small"], ["model.audio.arch=tiny", "model.image.arch=tiny"])
    models = build_models(cfg, ["audio"])
    # Input statistics as training leaves them (log-mel of quiet noise sits near log(0.01)).
    models["audio"].input_norm.running_mean.fill_(-3.0)
    models["audio"].input_norm.running_var.fill_(2.0)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": cfg.to_dict(),
        "parts": ["audio"],
        "models": models.state_dict(),
    }
    save_checkpoint(payload, folder / "checkpoints" / "last.pt")
    return folder


@pytest.fixture(scope="module")
def model(run: Path) -> hear.HearModel:
    return hear.load_model(str(run))


@pytest.fixture(scope="module")
def sound_model(run: Path) -> SoundModel:
    return load_model(run, device="cpu")


def _noise(n_sounds: int, seconds: float, seed: int = 0) -> torch.Tensor:
    """Uniform noise in [-1, 1], as the HEAR validator feeds."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n_sounds, int(seconds * RATE), generator=generator) * 2 - 1


def _centred_window(audio: np.ndarray, centre: int) -> np.ndarray:
    """The 15600 samples centred on sample `centre` of `audio`, zeros where it has none."""
    half = WINDOW_SAMPLES // 2
    window = np.zeros(WINDOW_SAMPLES, np.float32)
    first, last = max(0, centre - half), min(len(audio), centre + half)
    window[first - (centre - half) : last - (centre - half)] = audio[first:last]
    return window


def test_the_model_has_the_api_attributes(model: hear.HearModel) -> None:
    assert isinstance(model, torch.nn.Module)
    assert model.sample_rate == 16000
    assert type(model.scene_embedding_size) is int and model.scene_embedding_size == 128
    assert type(model.timestamp_embedding_size) is int and model.timestamp_embedding_size == 128
    assert model.hop_ms == 50


@pytest.mark.parametrize("seconds", [1.07, 1.98, 4.0, 0.3])
def test_timestamps_are_centres_in_ms_from_start_to_end(model, seconds) -> None:
    audio = _noise(2, seconds)
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    n_timestamps = audio.shape[1] // 800 + 1  # a window every 800 samples, the first at 0
    assert embeddings.dtype == torch.float32 and timestamps.dtype == torch.float32
    assert embeddings.shape == (2, n_timestamps, 128)
    assert timestamps.shape == (2, n_timestamps)
    expected = np.arange(n_timestamps) * 50.0
    np.testing.assert_array_equal(timestamps.numpy(), np.stack([expected, expected]))
    # The validator's bounds: embeddings up to the end of the audio, none past it.
    length_ms = 1000 * audio.shape[1] / RATE
    assert length_ms - 50 < float(timestamps.max()) <= length_ms
    assert torch.isfinite(embeddings).all()


def test_each_timestamp_embedding_is_f_of_the_window_centred_on_it(model, sound_model) -> None:
    # 3 sounds at a 10 ms hop: 401 windows each, in blocks of 256 // 3 = 85 windows, so the
    # checked windows include both sides of two block boundaries.
    model_10 = hear.load_model(str(sound_model.source), hop_ms=10)
    audio = _noise(3, 4.0, seed=1)
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model_10)
    assert embeddings.shape == (3, 401, 128)
    for k in (0, 1, 84, 85, 86, 170, 200, 400):
        centre = int(timestamps[0, k]) * RATE // 1000
        for sound in range(3):
            window = _centred_window(audio[sound].numpy(), centre)
            want = sound_model.embed_logmel(logmel_windows(window))[0]
            np.testing.assert_allclose(embeddings[sound, k].numpy(), want, atol=2e-5)
    # The default 50 ms hop takes every fifth of these windows.
    coarse, coarse_times = hear.get_timestamp_embeddings(audio, model)
    np.testing.assert_allclose(coarse.numpy(), embeddings[:, ::5].numpy(), atol=2e-5)
    np.testing.assert_array_equal(coarse_times.numpy(), timestamps[:, ::5].numpy())


def test_a_centred_burst_is_seen_by_the_window_at_its_time(model) -> None:
    # Silence with a 0.2 s noise burst at [2.4 s, 2.6 s): a window centred at t covers
    # [t - 487.5 ms, t + 487.5 ms), so the embeddings from 1950 to 3050 ms see some of it and
    # those from 1900 ms down and 3100 ms up see none (they equal the silence embedding).
    audio = torch.zeros(1, 5 * RATE)
    audio[0, 38400:41600] = _noise(1, 0.2, seed=2)[0]
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    silent, _ = hear.get_timestamp_embeddings(torch.zeros(1, 5 * RATE), model)
    moved = (embeddings - silent).norm(dim=-1)[0]
    at_burst = int(torch.argmax(moved))
    assert float(timestamps[0, at_burst]) == pytest.approx(2500, abs=400)  # sees all of it
    far = (timestamps[0] - 2500).abs() > 575
    assert float(moved[far].max()) < 1e-5 < float(moved[~far].min())


def test_scene_embeddings_are_the_mean_of_the_one_second_windows(model, sound_model) -> None:
    for seconds in (2.74, 0.5):  # the validator's length; one shorter than a window
        audio = _noise(4, seconds, seed=3)
        scene = hear.get_scene_embeddings(audio, model)
        assert scene.dtype == torch.float32 and scene.shape == (4, 128)
        for sound in range(4):
            want = sound_model.embed(audio[sound].numpy()).mean(axis=0)
            np.testing.assert_allclose(scene[sound].numpy(), want, atol=2e-5)
    assert hear.get_scene_embeddings(torch.zeros(0, RATE), model).shape == (0, 128)


def test_an_exported_folder_gives_the_same_embeddings(run, model, sound_model, tmp_path) -> None:
    folder = tmp_path / "exported"
    export_model(sound_model, folder, onnx=False)
    exported = hear.load_model(str(folder))
    audio = _noise(2, 2.0, seed=4)
    torch.testing.assert_close(
        hear.get_scene_embeddings(audio, exported), hear.get_scene_embeddings(audio, model)
    )
    got, got_times = hear.get_timestamp_embeddings(audio, exported)
    want, want_times = hear.get_timestamp_embeddings(audio, model)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_times, want_times)


def test_what_a_caller_can_get_wrong_is_one_sentence(run, model, tmp_path) -> None:
    audio = _noise(1, 1.0)
    cases = [
        (lambda: hear.load_model(""), "needs a model path"),
        (lambda: hear.load_model(str(tmp_path / "none")), "does not exist"),
        (lambda: hear.load_model(str(run), hop_ms=25), "multiple of 10 ms"),
        (lambda: hear.get_scene_embeddings(audio.numpy(), model), "torch.Tensor"),
        (lambda: hear.get_scene_embeddings(audio[0], model), r"shape \(16000,\)"),
        (lambda: hear.get_timestamp_embeddings((audio * 32767).short(), model), "int16"),
        (lambda: hear.get_scene_embeddings(audio, object()), "coincide.hear.load_model"),
    ]
    for call, message in cases:
        with pytest.raises(UserError, match=message):
            call()
