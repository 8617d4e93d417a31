"""The log-mel frontend of SPEC section 1: one (64 mel x 96 frame) window per second of audio.

A window is 0.96 s of 25 ms Hann frames with a 10 ms hop. Windows start on whole seconds, so the
window j covers samples [16000 j, 16000 j + 15600) and STFT frames [100 j, 100 j + 96) of one STFT
computed over the whole signal. Because 16000 is a multiple of the hop, the STFT of any slice that
starts on a whole second equals the matching columns of the whole-signal STFT: that is what lets
`coincide.media.decode.iter_features` compute features block by block.

The numpy entry point `logmel_windows` and the torch module `LogMelFrontend` are the same code
(the function calls the module), so ingestion and later prediction / ONNX export cannot drift.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import nn

from coincide.media.mel import mel_filterbank as slaney_mel_filterbank

SAMPLE_RATE = 16000
N_MELS = 64
WIN_LENGTH = 400  # 25 ms
N_FFT = WIN_LENGTH
HOP_LENGTH = 160  # 10 ms
N_FRAMES = 96  # 0.96 s
# The mel range of VGGish / the AudioSet models that the paper's setup follows: 125 Hz drops mains
# hum and rumble that carry little class information, 7500 Hz stays safely below the 8 kHz Nyquist
# limit of 16 kHz audio where resampling filters roll off.
FMIN = 125.0
FMAX = 7500.0
# Unit-peak mel triangles (norm=None), as VGGish, whose log offset is used below. The area
# normalisation (norm="slaney", librosa's default) makes mel values ~40x smaller at these band
# widths, so with the 0.01 offset quiet recordings sit on the floor (measured on an FSDD clip:
# 0.2% of mel bins above 0.01 with "slaney", 17% with unit-peak triangles).
MEL_NORM: str | None = None
# Stabilised log, log(mel + 0.01), on the magnitude mel spectrogram (VGGish uses the same offset):
# it bounds the log of silent bins instead of sending them to -inf.
LOG_OFFSET = 0.01

WINDOW_SAMPLES = (N_FRAMES - 1) * HOP_LENGTH + WIN_LENGTH  # 15600 samples = 0.975 s
WINDOW_STEP = SAMPLE_RATE  # one window per second
FRAMES_PER_STEP = WINDOW_STEP // HOP_LENGTH  # 100 STFT frames per second


def num_windows(n_samples: int) -> int:
    """Number of one-per-second windows in `n_samples` of 16 kHz audio.

    Windows are only taken where all 0.975 s of their samples exist, except that media shorter
    than one window are zero-padded to give exactly one.
    """
    return max(1, (n_samples - WINDOW_SAMPLES) // WINDOW_STEP + 1)


def mel_filterbank() -> np.ndarray:
    """The frontend's Slaney-scale mel filter bank, (N_MELS, N_FFT // 2 + 1) float32."""
    return slaney_mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS, FMIN, FMAX, MEL_NORM).astype(
        np.float32
    )


def _band_groups(mel_basis: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The mel bands in two runs of consecutive bands, each with the FFT bins it covers:
    [(first band, end band, first bin, end bin)], split where the two products are smallest.

    mel_basis: (N_MELS, bins). The filter bank is ~97% zeros (a band covers 2 to 16 of the 201
    bins, the high bands the widest), so a product per run skips most of them.
    """
    nonzero = mel_basis != 0
    first = nonzero.argmax(axis=1)
    end = nonzero.shape[1] - nonzero[:, ::-1].argmax(axis=1)

    def run(bands: slice) -> tuple[int, int]:
        return int(first[bands].min()), int(end[bands].max())

    def cost(split: int) -> int:
        (a0, a1), (b0, b1) = run(slice(0, split)), run(slice(split, None))
        return split * (a1 - a0) + (len(mel_basis) - split) * (b1 - b0)

    split = min(range(1, len(mel_basis)), key=cost)
    return [(0, split, *run(slice(0, split))), (split, len(mel_basis), *run(slice(split, None)))]


class LogMelFrontend(nn.Module):
    """Waveform to log-mel windows, in torch ops only (for prediction on GPU and ONNX export).

    forward: (batch, samples) float32 16 kHz mono -> (batch, n_windows, N_MELS, N_FRAMES),
    with n_windows = num_windows(samples).

    step_frames: STFT frames (10 ms) from one window's start to the next; the default, 100,
    is the one window per second of ingestion. A smaller step gives the overlapping windows
    of `coincide.hear`'s timestamp embeddings: then n_windows = (frames - 96) // step + 1.
    """

    def __init__(self, step_frames: int = FRAMES_PER_STEP) -> None:
        super().__init__()
        if step_frames < 1:
            raise ValueError(f"step_frames must be positive, not {step_frames}")
        self.step_frames = step_frames
        basis = mel_filterbank()
        # Periodic Hann (torch's default), the window librosa / scipy use with fftbins=True.
        self.register_buffer("window", torch.hann_window(WIN_LENGTH, periodic=True))
        self.register_buffer("mel_basis", torch.from_numpy(basis))
        # Where the filter bank is not zero (plain ints, not state: the bank is fixed by the
        # frontend parameters, so a loaded state_dict holds the same one).
        self._groups = _band_groups(basis)
        self._bins = (min(g[2] for g in self._groups), max(g[3] for g in self._groups))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        n_samples = waveform.shape[-1]
        if n_samples < WINDOW_SAMPLES:
            waveform = nn.functional.pad(waveform, (0, WINDOW_SAMPLES - n_samples))
        # The STFT as one real FFT of the framed signal (center=False framing, equal to
        # torch.stft to the bit): its (frames, freq) layout is the one the FFT writes, so the
        # magnitude and the mel product below run on contiguous memory (~10% faster on CPU).
        frames = waveform.unfold(-1, WIN_LENGTH, HOP_LENGTH) * self.window  # (batch, frames, 400)
        spectrum = torch.fft.rfft(frames)  # (batch, frames, freq) complex
        # |X| as sqrt(re^2 + im^2): twice as fast on CPU as the overflow-safe complex abs, and
        # exported to ONNX as plain real ops. Squaring the interleaved (re, im) pairs first runs
        # on contiguous memory; the sum and the root then work on half as many numbers. Only
        # the bins some mel band covers are needed.
        low, high = self._bins
        squares = torch.view_as_real(spectrum[..., low:high]).square()
        magnitude = (squares[..., 0] + squares[..., 1]).sqrt_()  # (batch, frames, high - low)
        # The mel product run by run of bands, over the bins each run covers (zeros skipped).
        mel = torch.cat(
            [
                torch.matmul(magnitude[..., b0 - low : b1 - low], self.mel_basis[m0:m1, b0:b1].T)
                for m0, m1, b0, b1 in self._groups
            ],
            dim=-1,
        )  # (batch, frames, mel)
        log_mel = torch.log(mel.add_(LOG_OFFSET))
        # (batch, n_windows, mel, N_FRAMES): window j = frames [step j, step j + 96)
        return log_mel.unfold(1, N_FRAMES, self.step_frames).contiguous()


@functools.cache
def _shared_frontend() -> LogMelFrontend:
    # One filter bank and window per process, shared by every call.
    return LogMelFrontend()


def logmel_windows(waveform: np.ndarray) -> np.ndarray:
    """Log-mel windows of one waveform, (samples,) float32 16 kHz mono -> (n, 64, 96) float32."""
    if waveform.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {waveform.shape}")
    samples = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))
    # Inference mode, not just no_grad: no autograd bookkeeping on any op (cheaper per call).
    with torch.inference_mode():
        return _shared_frontend()(samples[None])[0].numpy()


# Side of the square RGB frames kept at 1 Hz (pixels).
FRAME_SIZE = 128


def frontend_parameters() -> dict[str, Any]:
    """The parameters that fix what the stored features mean; a store keeps them in store.json
    and refuses features made with others."""
    return {
        "sample_rate": SAMPLE_RATE,
        "n_mels": N_MELS,
        "win_length": WIN_LENGTH,
        "n_fft": N_FFT,
        "hop_length": HOP_LENGTH,
        "window_frames": N_FRAMES,
        "window_step": WINDOW_STEP,
        "fmin": FMIN,
        "fmax": FMAX,
        "mel_norm": MEL_NORM,
        "log_offset": LOG_OFFSET,
        "frame_size": FRAME_SIZE,
    }
