"""The package's Slaney mel filter bank against librosa's (the test-only reference)."""

import librosa
import numpy as np
import pytest

from coincide.media import frontend
from coincide.media.mel import hz_to_mel, mel_filterbank, mel_frequencies, mel_to_hz

# (sample rate, n_fft, n_mels, fmin, fmax): the frontend's own parameters first, then others
# (fmax None = Nyquist; fmin 0 puts the first edge at 0 Hz; a bank with edges on both sides of
# 1 kHz, and one entirely below it where the scale is linear).
PARAMETERS = [
    (frontend.SAMPLE_RATE, frontend.N_FFT, frontend.N_MELS, frontend.FMIN, frontend.FMAX),
    (16000, 512, 40, 0.0, None),
    (22050, 2048, 128, 0.0, 8000.0),
    (44100, 1024, 80, 30.0, 16000.0),
    (8000, 256, 20, 50.0, 900.0),
]


@pytest.mark.parametrize("norm", [None, "slaney"])
@pytest.mark.parametrize(("rate", "n_fft", "n_mels", "fmin", "fmax"), PARAMETERS)
def test_filter_bank_equals_librosa(rate, n_fft, n_mels, fmin, fmax, norm) -> None:
    ours = mel_filterbank(rate, n_fft, n_mels, fmin, fmax, norm)
    reference = librosa.filters.mel(
        sr=rate,
        n_fft=n_fft,
        n_mels=n_mels,
        fmin=fmin,
        fmax=fmax,
        htk=False,
        norm=norm,
        dtype=np.float64,
    )

    assert ours.shape == reference.shape == (n_mels, n_fft // 2 + 1)
    assert np.count_nonzero(reference) > n_mels  # real triangles, not an empty bank
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-6)


def test_frontend_bank_is_librosas_in_float32() -> None:
    reference = librosa.filters.mel(
        sr=frontend.SAMPLE_RATE,
        n_fft=frontend.N_FFT,
        n_mels=frontend.N_MELS,
        fmin=frontend.FMIN,
        fmax=frontend.FMAX,
        norm=frontend.MEL_NORM,
    )
    ours = frontend.mel_filterbank()

    assert ours.dtype == reference.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=1e-6)
    # Unit-peak triangles (MEL_NORM None): every band reaches close to 1 at some FFT bin.
    assert ours.max(axis=1).min() > 0.5 and ours.max() <= 1.0


def test_mel_scale_is_slaneys_worked_values() -> None:
    # Linear below 1 kHz (60 Hz = 0.9 mel, 1 kHz = 15 mel), 27 mel per factor 6.4 above.
    np.testing.assert_allclose(hz_to_mel(np.array([60.0, 1000.0, 6400.0])), [0.9, 15.0, 42.0])
    hz = np.array([0.0, 100.0, 999.0, 1000.0, 1001.0, 4000.0, 11025.0])
    np.testing.assert_allclose(hz_to_mel(hz), librosa.hz_to_mel(hz), rtol=1e-12)
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(hz)), hz, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(
        mel_frequencies(10, 20.0, 8000.0),
        librosa.mel_frequencies(10, fmin=20.0, fmax=8000.0),
        rtol=1e-12,
    )


def test_unknown_norm_is_refused() -> None:
    with pytest.raises(ValueError, match="norm"):
        mel_filterbank(16000, 400, 64, norm="l2")
