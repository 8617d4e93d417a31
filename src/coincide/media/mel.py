"""The Slaney mel scale and its triangular filter bank, in numpy.

A transcription of `librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax, htk=False, norm=...)`
(librosa 0.10-0.11, librosa/filters.py and librosa/core/convert.py, ISC licence), which follows
M. Slaney, "Auditory Toolbox, version 2", Interval Research Corporation technical report
1998-010 (the mel scale of its MFCC code): linear below 1 kHz, one mel per 200/3 Hz (15 mel at
1 kHz), and logarithmic above, 27 mel per factor 6.4 in frequency. librosa is kept
as a test dependency only (tests/test_mel.py checks equality to 1e-6); at run time it would pull
numba and llvmlite (about 208 MB) for this one function.
"""

from __future__ import annotations

import numpy as np

# Slaney's scale: mel = f / F_SP below MIN_LOG_HZ, then MIN_LOG_MEL + log(f / MIN_LOG_HZ) / LOGSTEP.
F_SP = 200.0 / 3.0
MIN_LOG_HZ = 1000.0
MIN_LOG_MEL = MIN_LOG_HZ / F_SP  # 15 mel
LOGSTEP = np.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Frequencies in Hz to Slaney mel, elementwise (float64)."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / F_SP
    # np.maximum keeps log() away from 0 Hz on the branch where() discards.
    log = MIN_LOG_MEL + np.log(np.maximum(hz, MIN_LOG_HZ) / MIN_LOG_HZ) / LOGSTEP
    return np.where(hz >= MIN_LOG_HZ, log, linear)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Slaney mel to frequencies in Hz, elementwise (float64); the inverse of `hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    linear = F_SP * mel
    log = MIN_LOG_HZ * np.exp(LOGSTEP * (np.maximum(mel, MIN_LOG_MEL) - MIN_LOG_MEL))
    return np.where(mel >= MIN_LOG_MEL, log, linear)


def mel_frequencies(n: int, fmin: float, fmax: float) -> np.ndarray:
    """`n` frequencies in Hz evenly spaced on the mel scale from `fmin` to `fmax`, (n,)."""
    return mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n))


def mel_filterbank(
    sample_rate: float,
    n_fft: int,
    n_mels: int,
    fmin: float = 0.0,
    fmax: float | None = None,
    norm: str | None = "slaney",
) -> np.ndarray:
    """Triangular mel filters over the bins of an `n_fft`-point real FFT, (n_mels, n_fft // 2 + 1)
    float64.

    Band i rises linearly from edge i to edge i + 1 and falls to edge i + 2, with n_mels + 2 edges
    evenly spaced in mel from `fmin` to `fmax` (default: Nyquist). norm=None keeps unit peaks;
    norm="slaney" divides each triangle by its width in Hz over 2 (unit area), so that bands
    carry about the same energy however wide they are.
    """
    if norm not in (None, "slaney"):
        raise ValueError(f"norm must be None or 'slaney', got {norm!r}")
    fmax = sample_rate / 2 if fmax is None else fmax
    edges = mel_frequencies(n_mels + 2, fmin, fmax)  # (n_mels + 2,) Hz
    bins = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)  # (n_fft // 2 + 1,) Hz
    widths = np.diff(edges)  # (n_mels + 1,)
    offsets = edges[:, None] - bins[None, :]  # (n_mels + 2, bins): edge minus bin frequency
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    if norm == "slaney":
        weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights
