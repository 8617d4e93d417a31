"""Decoded audio frames of any format -> float32 mono 16 kHz samples, by libswresample (PyAV)."""

from __future__ import annotations

import av
import numpy as np

from coincide.media.frontend import SAMPLE_RATE

# Seconds of decoded audio gathered per call to the resampler: each call has a fixed cost of about
# as much as resampling a second of audio.
BATCH_S = 4
# Audio that needs no resampling leaves the FIFO in larger batches (fewer copies and calls; the
# FIFO holds at most this much, 2 MB).
PASSTHROUGH_BATCH_S = 32
# Decoded formats that already are float mono at 16 kHz: the resampler would copy them unchanged.
_PASSTHROUGH = {("flt", "mono", SAMPLE_RATE), ("fltp", "mono", SAMPLE_RATE)}


class AudioConverter:
    """Turns one stream's decoded frames, in order, into float32 mono 16 kHz chunks.

    Decoded frames (often 1024 samples) are gathered in a FIFO into a few seconds of audio before
    each call to the resampler, whose per-call cost would otherwise rival the decoding itself;
    audio that is already float mono at 16 kHz skips the resampler.
    Packets that failed to decode are reported with `lost_packet()` and become silence, so the
    samples after them stay on the container's clock (and in step with the video); lost packets
    before the first frame become silence from `origin_s`, the stream's start time.
    """

    def __init__(self, origin_s: float) -> None:
        self.origin_s = origin_s
        self.n_samples = 0  # 16 kHz samples produced so far
        self._resampler: av.AudioResampler | None = None
        self._fifo: av.AudioFifo | None = None  # decoded input not yet resampled
        self._input_format: tuple[str, str, int] | None = None
        self._batch_samples = 0  # input samples gathered before the FIFO is drained
        self._previous: tuple[int | None, int, int] | None = None  # last frame: pts, samples, rate
        self._lost = False  # a packet failed since the last decoded frame

    def lost_packet(self) -> None:
        """Note that a packet of this stream failed to decode."""
        self._lost = True

    def push(self, frame: av.AudioFrame) -> list[np.ndarray]:
        """Take the next decoded frame; returns the 16 kHz chunks it completes (maybe none)."""
        if self._lost:
            return self._push_after_loss(frame)
        return self._queue(frame)

    def _push_after_loss(self, frame: av.AudioFrame) -> list[np.ndarray]:
        """`push` for the first frame after lost packets: silence fills their time first."""
        chunks = []
        if self._previous is not None:
            gap_s = _gap_s(self._previous, frame)
        else:
            gap_s = 0.0 if frame.time is None else frame.time - self.origin_s
        silence = _silence(frame, gap_s)
        if silence is not None:
            chunks += self._queue(silence)
        self._lost = False
        return chunks + self._queue(frame)

    def flush(self) -> list[np.ndarray]:
        """The chunks still held back; call once after the last frame."""
        chunks = []
        if self._fifo is not None and self._fifo.samples:
            chunks += self._drained()
        if self._resampler is not None:
            chunks += self._converted(self._resampler.resample(None))
        self._resampler = self._fifo = self._input_format = None
        return chunks

    def _queue(self, frame: av.AudioFrame) -> list[np.ndarray]:
        self._previous = (frame.pts, frame.samples, frame.sample_rate)
        chunks = []
        # A stream may change sample rate or channel layout midway (spliced recordings, or a
        # corrupt header that still decodes): flush and start a resampler for the new input.
        input_format = (frame.format.name, frame.layout.name, frame.sample_rate)
        if input_format != self._input_format:
            chunks += self.flush()
            if input_format not in _PASSTHROUGH:
                self._resampler = av.AudioResampler(
                    format="flt",
                    layout="mono",
                    rate=SAMPLE_RATE,
                    # Downmix to the mean of the channels (as librosa.to_mono does), so a stereo
                    # and a mono copy of a recording get the same level; libswresample's default
                    # for float output sums at -3 dB per channel, 3 dB louder than the mean.
                    options={"rematrix_maxval": "1.0"},
                )
            self._fifo = av.AudioFifo()
            self._input_format = input_format
            batch_s = PASSTHROUGH_BATCH_S if self._resampler is None else BATCH_S
            self._batch_samples = batch_s * frame.sample_rate
        fifo = self._fifo
        assert fifo is not None
        # The FIFO checks timestamps for continuity; the samples are already in order (gaps
        # were filled in `push`), so it need not.
        frame.pts = None
        fifo.write(frame)
        if fifo.samples >= self._batch_samples:
            chunks += self._drained()
        return chunks

    def _drained(self) -> list[np.ndarray]:
        """Everything in the FIFO, resampled."""
        assert self._fifo is not None
        batch = self._fifo.read()
        if self._resampler is None:
            return self._converted([batch])
        return self._converted(self._resampler.resample(batch))

    def _converted(self, frames: list[av.AudioFrame]) -> list[np.ndarray]:
        chunks = [frame.to_ndarray().reshape(-1) for frame in frames]
        self.n_samples += sum(len(chunk) for chunk in chunks)
        return chunks


def _gap_s(previous: tuple[int | None, int, int], frame: av.AudioFrame) -> float:
    """Seconds from the end of the previous frame, (pts, samples, rate), to the start of `frame`
    (0 when either is untimed); both frames are of one stream, so they share a time base."""
    previous_pts, previous_samples, previous_rate = previous
    if previous_pts is None or frame.pts is None or frame.time_base is None:
        return 0.0
    return float((frame.pts - previous_pts) * frame.time_base) - previous_samples / previous_rate


def _silence(like: av.AudioFrame, seconds: float) -> av.AudioFrame | None:
    """A silent frame of `seconds` in the format of `like` (None when under one sample)."""
    n_samples = round(seconds * like.sample_rate)
    if n_samples < 1:
        return None
    silence = av.AudioFrame(format=like.format.name, layout=like.layout.name, samples=n_samples)
    # Unsigned 8-bit audio is centred on 128; every other format on 0.
    level = 0x80 if like.format.name.startswith("u8") else 0
    for plane in silence.planes:
        plane.update(bytes([level]) * plane.buffer_size)
    silence.sample_rate = like.sample_rate
    return silence
