"""What the page plays and shows for one window: a WAV clip with context, a spectrogram picture
with the window marked, its video frame and the frames around it.

Times are those of the feature store: seconds from the media file's first audio sample, window
`t` covering audio [t, t + 0.96). A clip spans [t - context, t + 0.96 + context], cut to the file.
Audio is decoded from the ingested media file with PyAV (seeking near the clip first, so an hour
long file costs no more than a short one) and resampled to 16 kHz mono, the audio the model hears.
The spectrogram is drawn from the store's own log-mel windows, so the picture is exactly the
model's input, placed on the clip's time axis (100 columns per second).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import av
import av.container
import numpy as np
from PIL import Image, ImageDraw

from coincide.errors import MediaError
from coincide.media.wav import write_wav

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WINDOW_S = 0.96
COLUMNS_PER_S = 100  # the log-mel hop is 10 ms
# Seeking lands on a packet at or before the target; start this much earlier so that codecs
# with long frames or a decoder delay still cover the clip start.
_SEEK_PREROLL_S = 1.0
_BACKGROUND = (40, 40, 48)  # columns that no window covers
_MARK = (255, 214, 10)  # the window's outline, on the spectrogram and the film strip


@dataclass(frozen=True)
class ClipSpan:
    """The stretch of a media file played for a window, in seconds on the store's clock."""

    start_s: float
    end_s: float
    window_start_s: float
    window_end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def clip_span(time_s: float, duration_s: float, context_s: float) -> ClipSpan:
    """The clip around the window starting at `time_s` in a file `duration_s` long."""
    end_of_file = max(float(duration_s), time_s + WINDOW_S)
    return ClipSpan(
        start_s=max(0.0, time_s - context_s),
        end_s=min(end_of_file, time_s + WINDOW_S + context_s),
        window_start_s=float(time_s),
        window_end_s=float(time_s) + WINDOW_S,
    )


# ---------------------------------------------------------------------------------------------
# Audio


def _open_audio(path: Path) -> tuple[av.container.InputContainer, av.AudioStream]:
    try:
        container = av.open(str(path), mode="r")
    except FileNotFoundError as err:
        raise MediaError("file not found") from err
    except PermissionError as err:
        raise MediaError("permission denied") from err
    except (av.error.FFmpegError, OSError) as err:
        raise MediaError(f"cannot open: {err}") from err
    stream = container.streams.best("audio")
    if stream is None:
        container.close()
        raise MediaError("no audio stream")
    for other in container.streams:
        if other.index != stream.index:
            other.discard = av.stream.Discard.all
    return container, stream


def _decode_from(path: Path, start_s: float, end_s: float, seek: bool) -> np.ndarray | None:
    """Samples of [start_s, end_s) (seconds from the first audio sample), or None when a seek
    overshot the start or timestamps are missing (the caller then decodes from the start)."""
    container, stream = _open_audio(path)
    with container:
        time_base = stream.time_base
        origin = float(stream.start_time * time_base) if stream.start_time is not None else 0.0
        target = start_s - _SEEK_PREROLL_S
        if seek and target > 0 and time_base is not None:
            container.seek(int((origin + target) / time_base), stream=stream, backward=True)
        resampler: av.AudioResampler | None = None
        input_format = None
        first_time: float | None = None  # store time of the first sample decoded
        chunks: list[np.ndarray] = []
        n_samples = 0
        try:
            for frame in container.decode(stream):
                if first_time is None:
                    if frame.time is None:
                        if seek:
                            return None
                        first_time = 0.0
                    else:
                        first_time = float(frame.time) - origin if seek else 0.0
                    if first_time > start_s + 1.0 / SAMPLE_RATE:
                        return None
                fmt = (frame.format.name, frame.layout.name, frame.sample_rate)
                if fmt != input_format:
                    # A stream may change rate or layout midway: start a resampler for it.
                    if resampler is not None:
                        chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
                    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
                    input_format = fmt
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    n_samples += out.samples
                if first_time + n_samples / SAMPLE_RATE >= end_s:
                    break
        except av.error.FFmpegError as err:
            if not chunks:
                raise MediaError(f"audio does not decode ({err})") from err
            # A damaged stretch ends the clip early; what decoded before it is still worth hearing.
            logger.warning("%s: audio decoding stopped early: %s", path, err)
        if resampler is not None:
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    if first_time is None:
        raise MediaError("audio stream has no samples")
    samples = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0)
    begin = max(0, round((start_s - first_time) * SAMPLE_RATE))
    return samples[begin : begin + round((end_s - start_s) * SAMPLE_RATE)]


def decode_span(path: Path, span: ClipSpan) -> np.ndarray:
    """`(samples,)` float32 16 kHz mono audio of `span` from the media file at `path`.

    Raises MediaError when the file cannot be opened or its audio does not decode.
    """
    samples = _decode_from(path, span.start_s, span.end_s, seek=True)
    if samples is None:
        samples = _decode_from(path, span.start_s, span.end_s, seek=False)
    assert samples is not None  # decoding from the start never gives up
    return samples


def wav_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """A mono 16-bit PCM WAV file holding `(samples,)` float audio in [-1, 1]."""
    buffer = io.BytesIO()
    write_wav(buffer, samples, rate)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Pictures


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def spectrogram_png(
    logmel: np.ndarray, times_s: np.ndarray, span: ClipSpan, x_scale: int = 2, y_scale: int = 3
) -> bytes:
    """A PNG of log-mel windows laid out on the clip's time axis, the window of `span` outlined
    and the context dimmed.

    Args:
        logmel: `(n, mel, frames)` log-mel windows of the clip's file that fall in the clip.
        times_s: `(n,)` start of each window in seconds (same clock as `span`).
        span: the clip; the picture is `duration * 100 * x_scale` pixels wide.
    """
    n_mels, n_frames = logmel.shape[1], logmel.shape[2]
    columns = max(1, round(span.duration_s * COLUMNS_PER_S))
    canvas = np.full((n_mels, columns), np.nan, dtype=np.float32)
    for window, start in zip(logmel, times_s, strict=True):
        first = round((float(start) - span.start_s) * COLUMNS_PER_S)
        lo, hi = max(first, 0), min(first + n_frames, columns)
        if hi > lo:
            canvas[:, lo:hi] = window[:, lo - first : hi - first]
    covered = ~np.isnan(canvas)
    rgb = np.empty((n_mels, columns, 3), dtype=np.uint8)
    rgb[:] = _BACKGROUND
    if covered.any():
        # Contrast from the picture itself: quiet recordings stay readable.
        low, high = np.percentile(canvas[covered], [2.0, 99.5])
        scaled = np.clip((canvas - low) / max(float(high - low), 1e-6), 0.0, 1.0)
        from matplotlib import colormaps

        colours = (colormaps["magma"](scaled[covered])[:, :3] * 255).astype(np.uint8)
        rgb[covered] = colours
    # Dim the context so that the window stands out; low frequencies at the bottom.
    lo = round((span.window_start_s - span.start_s) * COLUMNS_PER_S)
    hi = round((span.window_end_s - span.start_s) * COLUMNS_PER_S)
    context = np.ones(columns, dtype=bool)
    context[max(lo, 0) : max(hi, 0)] = False
    rgb[:, context] = (rgb[:, context] * 0.45).astype(np.uint8)
    image = Image.fromarray(rgb[::-1]).resize(
        (columns * x_scale, n_mels * y_scale), Image.Resampling.NEAREST
    )
    draw = ImageDraw.Draw(image)
    draw.rectangle(
        [lo * x_scale, 0, hi * x_scale - 1, n_mels * y_scale - 1], outline=_MARK, width=2
    )
    return _png(image)


def frame_png(frame: np.ndarray) -> bytes:
    """A PNG of one `(height, width, 3)` uint8 RGB frame."""
    return _png(Image.fromarray(np.ascontiguousarray(frame)))


def filmstrip_png(frames: list[np.ndarray | None], marked: int, size: int = 96) -> bytes:
    """A PNG of frames side by side, `size` pixels each, frame `marked` outlined; None draws an
    empty (grey) cell for a window without a picture."""
    gap = 4
    strip = Image.new("RGB", (len(frames) * (size + gap) + gap, size + 2 * gap), _BACKGROUND)
    draw = ImageDraw.Draw(strip)
    for k, frame in enumerate(frames):
        x = gap + k * (size + gap)
        if frame is None:
            draw.rectangle([x, gap, x + size - 1, gap + size - 1], fill=(90, 90, 96))
        else:
            cell = Image.fromarray(np.ascontiguousarray(frame)).resize((size, size))
            strip.paste(cell, (x, gap))
        if k == marked:
            draw.rectangle([x - 3, gap - 3, x + size + 2, gap + size + 2], outline=_MARK, width=3)
    return _png(strip)
