"""The one WAV writer: mono 16-bit PCM that the stdlib reader (and so any browser) reads back."""

import io
import wave

import numpy as np

from coincide.media.wav import write_wav


def _read(source) -> tuple[np.ndarray, int, int, int]:
    with wave.open(source, "rb") as wav:
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        return pcm, wav.getframerate(), wav.getnchannels(), wav.getsampwidth()


def test_samples_come_back_within_one_step_and_beyond_full_scale_are_clipped(tmp_path) -> None:
    t = np.arange(8000) / 8000
    tone = (0.8 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    loud = np.array([1.5, -1.5, 1.0, -1.0, 0.0], np.float32)

    write_wav(tmp_path / "tone.wav", np.concatenate([tone, loud]), 8000)
    pcm, rate, channels, width = _read(str(tmp_path / "tone.wav"))

    assert (rate, channels, width, len(pcm)) == (8000, 1, 2, 8005)
    # libsndfile's scale: full scale is 32768 steps; a sample lands within one step.
    np.testing.assert_allclose(pcm[:8000] / 32768, tone, atol=1 / 32768)
    assert pcm[8000] == 32767 and pcm[8001] <= -32767  # clipped, not wrapped around
    assert pcm[8004] == 0


def test_a_file_object_gets_the_same_bytes_as_a_path(tmp_path) -> None:
    samples = np.random.default_rng(0).uniform(-1, 1, 1600).astype(np.float32)
    buffer = io.BytesIO()

    write_wav(buffer, samples, 16000)
    write_wav(tmp_path / "a.wav", samples, 16000)

    assert buffer.getvalue() == (tmp_path / "a.wav").read_bytes()
    assert _read(io.BytesIO(buffer.getvalue()))[1] == 16000
