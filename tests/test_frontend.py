"""The log-mel frontend against librosa on real recordings, and its torch module."""

from pathlib import Path

import librosa
import numpy as np
import pytest
import torch

from coincide.media.decode import decode_audio
from coincide.media.frontend import (
    FMAX,
    FMIN,
    LOG_OFFSET,
    MEL_NORM,
    N_FRAMES,
    N_MELS,
    SAMPLE_RATE,
    LogMelFrontend,
    logmel_windows,
    num_windows,
)

torch.set_num_threads(1)

DATA = Path(__file__).parent / "data"
# Two spoken digits (FSDD, 8 kHz originals) and crackling fire (ESC-10, 16 kHz): see data/README.md.
RECORDINGS = ["9_theo_16.wav", "7_theo_36.wav", "4-164661-A-12.flac"]


def librosa_windows(waveform: np.ndarray) -> np.ndarray:
    """The reference: librosa's mel spectrogram, stabilised log, cut into one window per second."""
    mel = librosa.feature.melspectrogram(
        y=waveform,
        sr=SAMPLE_RATE,
        n_fft=400,
        hop_length=160,
        win_length=400,
        window="hann",
        center=False,
        power=1.0,
        n_mels=N_MELS,
        fmin=FMIN,
        fmax=FMAX,
        norm=MEL_NORM,
    )
    log_mel = np.log(mel + LOG_OFFSET)
    n = num_windows(len(waveform))
    return np.stack([log_mel[:, 100 * j : 100 * j + N_FRAMES] for j in range(n)])


@pytest.mark.parametrize(
    ("n_samples", "expected"),
    [(0, 1), (1, 1), (15599, 1), (15600, 1), (31599, 1), (31600, 2), (80000, 5), (95599, 5)],
)
def test_num_windows(n_samples: int, expected: int) -> None:
    assert num_windows(n_samples) == expected


@pytest.mark.parametrize("name", RECORDINGS)
def test_logmel_matches_librosa_on_real_recordings(name: str) -> None:
    waveform = decode_audio(DATA / name)
    ours = logmel_windows(waveform)
    reference = librosa_windows(waveform)

    assert ours.shape == reference.shape == (num_windows(len(waveform)), N_MELS, N_FRAMES)
    assert ours.dtype == np.float32
    # Real sound rising well above the log offset, so the comparison below can fail.
    assert reference.max() - reference.min() > 1.0
    # Relative error of the stabilised mel energies (mel + offset), element by element; it is
    # the absolute error of their logs.
    relative_error = np.abs(np.expm1(ours.astype(np.float64) - reference))
    assert relative_error.max() <= 1e-3


def test_short_audio_is_zero_padded_to_one_window() -> None:
    waveform = decode_audio(DATA / "9_theo_16.wav")[:4000]
    padded = np.concatenate([waveform, np.zeros(15600 - 4000, np.float32)])

    ours = logmel_windows(waveform)

    assert ours.shape == (1, N_MELS, N_FRAMES)
    np.testing.assert_allclose(ours, librosa_windows(padded), atol=1e-3)


def test_windows_start_on_whole_seconds() -> None:
    waveform = decode_audio(DATA / "4-164661-A-12.flac")

    whole = logmel_windows(waveform)
    # Window 3 computed from the audio that starts at second 3 is the same window.
    tail = logmel_windows(waveform[3 * SAMPLE_RATE :])

    np.testing.assert_allclose(tail[0], whole[3], atol=1e-5)


def test_tone_peaks_at_the_mel_band_of_its_frequency() -> None:
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    centres = librosa.mel_frequencies(N_MELS + 2, fmin=FMIN, fmax=FMAX)[1:-1]
    for freq in (500.0, 1000.0, 3000.0):
        window = logmel_windows(np.sin(2 * np.pi * freq * t).astype(np.float32))[0]
        assert window.mean(axis=1).argmax() == np.abs(centres - freq).argmin()


def test_torch_module_equals_logmel_windows_on_a_batch() -> None:
    waveforms = [decode_audio(DATA / name)[:35000] for name in RECORDINGS]
    batch = torch.from_numpy(np.stack(waveforms))

    with torch.no_grad():
        out = LogMelFrontend()(batch)

    assert out.shape == (3, 2, N_MELS, N_FRAMES)
    for i, waveform in enumerate(waveforms):
        np.testing.assert_allclose(out[i].numpy(), logmel_windows(waveform), atol=1e-5)


def test_torch_module_keeps_its_constants_in_buffers() -> None:
    frontend = LogMelFrontend()
    state = frontend.state_dict()
    assert set(state) == {"window", "mel_basis"}
    assert state["mel_basis"].shape == (N_MELS, 201)
    np.testing.assert_allclose(
        state["window"].numpy(), librosa.filters.get_window("hann", 400, fftbins=True), atol=1e-6
    )
