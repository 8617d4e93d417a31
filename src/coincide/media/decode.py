"""Decode a media file into the model's inputs: log-mel windows and one frame per window.

One pass over the file demuxes the audio stream and the video stream (if any) together, as a
player does. Audio is resampled to 16 kHz mono float by libswresample (`media.audio`) and cut
into one log-mel window per second (`media.frontend`); window j is paired with the video frame
on screen at its centre (`media.frames`). Windows come out in blocks as soon as both streams have
passed them, so memory is bounded by the block size plus how far the file interleaves its
streams (well under a second in ordinary files), not by the file's length. (One exception: when
the video track ends long before the audio, the audio after it, 64 KB a second, is held until the
end of the file shows that no frame follows.) Times are on the
container's clock from the audio stream's start, so audio that starts late is paired with the
frames on screen while it sounds; video more than a couple of seconds past the audio's stated
duration is not decoded, and non-reference frames that no window uses (most B-frames) are not
decoded either (`_Demuxer.skip_unused_frames`: the frames chosen are those of a full decode).

Choices for imperfect input (all end in `MediaError` when no audio decodes; what was damaged is
logged, and listed in `MediaFeatures.warnings` of the last block):
- a packet that fails to decode is skipped and logged, as the ffmpeg command line does; a lost
  audio packet becomes silence of its duration, so later windows keep their times;
- a read error (a truncated file) ends the file there: what decoded before it is kept;
- a file whose header promises more audio than decodes (a WAV, FLAC or MP3 cut short) is
  kept as far as it decodes, with a warning (`media.promise`);
- a video stream that does not decode leaves its windows without frames;
- cover art in audio files (an "attached picture" video stream) is not a video stream.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.container
import numpy as np
from av.stream import Discard, Disposition

from coincide.errors import MediaError
from coincide.media.audio import AudioConverter
from coincide.media.frames import FrameSelector
from coincide.media.frontend import (
    FRAME_SIZE,
    SAMPLE_RATE,
    WINDOW_SAMPLES,
    WINDOW_STEP,
    logmel_windows,
)
from coincide.media.promise import promised_s

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".webm", ".avi"}
AUDIO_EXTENSIONS = {".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".opus"}
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS | AUDIO_EXTENSIONS
# Video is decoded up to this far past the audio's stated end (headers are approximate).
VIDEO_MARGIN_S = 2.0
# Audio this much shorter than its header promises is reported as truncated; less is within how
# far codec frames and header rounding move a file's end (an AAC or MP3 frame is 23-26 ms).
TRUNCATION_TOLERANCE_S = 0.1


@dataclass
class MediaFeatures:
    """Features of a media file, or of a block of consecutive windows of one.

    logmel: (n, 64, 96) float32 log-mel windows, one per second.
    frames: (n, size, size, 3) uint8 RGB, row i the frame shown at the centre of window i (zeros
        where has_frame is False); None when the file has no video stream.
    has_frame: (n,) bool.
    time_s: (n,) float64 start of each window in seconds from the start of the audio.
    duration_s: audio duration in seconds; in a block from `iter_features` other than the last,
        the end of that block's span (the last block carries the whole file's duration).
    warnings: what was wrong with the file though it decoded (a truncation, undecodable packets),
        one clause each; only the last block of `iter_features` carries them.
    """

    logmel: np.ndarray
    frames: np.ndarray | None
    has_frame: np.ndarray
    time_s: np.ndarray
    duration_s: float
    warnings: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.logmel)


# Decoding threads per stream (FFmpeg's thread_count; 0 is its default, a thread pool per file).
# One: ingestion decodes one file per worker process, and FFmpeg's default starts a pool of
# slice threads for every file, which H.264 from cameras and encoders (one slice per frame)
# cannot use (`benchmarks/ingest.py --default-decoder-threads` measures what it costs); "AUTO"
# frame threads cost ~60% more CPU on small frames.
DECODER_THREADS = 1


def _open(path: Path) -> av.container.InputContainer:
    """Open a media file for reading, turning every way that can fail into a `MediaError`."""
    try:
        file_stat = os.stat(path)
    except FileNotFoundError as error:
        raise MediaError("file not found") from error
    except PermissionError as error:
        raise MediaError("permission denied") from error
    except OSError as error:
        raise MediaError(f"cannot read: {error.strerror}") from error
    if not stat.S_ISREG(file_stat.st_mode):
        raise MediaError("not a regular file")
    if file_stat.st_size == 0:
        raise MediaError("empty file")
    if not os.access(path, os.R_OK):
        raise MediaError("permission denied")
    try:
        return av.open(str(path), mode="r")
    except PermissionError as error:
        raise MediaError("permission denied") from error
    except av.error.InvalidDataError as error:
        raise MediaError("not a media file, or its header is corrupt or missing") from error
    except (av.error.FFmpegError, OSError) as error:
        raise MediaError(f"cannot open: {error}") from error


def _audio_stream(container: av.container.InputContainer) -> av.AudioStream:
    stream = container.streams.best("audio")
    if stream is None:
        raise MediaError("no audio stream")
    return stream


def _video_stream(container: av.container.InputContainer) -> av.VideoStream | None:
    streams = [s for s in container.streams.video if not s.disposition & Disposition.attached_pic]
    return streams[0] if streams else None


def _seconds(ticks: int, time_base: Fraction) -> float:
    """ticks x time_base as a float: float(ticks * time_base) to the bit, without building
    Fractions (integer true division is correctly rounded, as Fraction's float() is)."""
    return ticks * time_base.numerator / time_base.denominator


def _start_s(stream: av.Stream) -> float:
    """Container time of a stream's first sample, from its header (0 when not stated)."""
    start_time, time_base = stream.start_time, stream.time_base
    if start_time is None or time_base is None:
        return 0.0
    return _seconds(start_time, time_base)


def _end_s(stream: av.Stream) -> float | None:
    """Container time where a stream ends, from its header or the container's (None if unknown)."""
    duration, time_base = stream.duration, stream.time_base
    if duration is not None and time_base is not None:
        return _start_s(stream) + _seconds(duration, time_base)
    if stream.container.duration is not None:
        return stream.container.duration / av.time_base
    return None


class _Demuxer:
    """Decoded frames of an audio stream and an optional video stream, in file order.

    Yields (stream, frames) per packet, frames None for a packet that failed to decode;
    failures are counted and noted once at the end in `warnings`. A read error ends the file
    (noted too): the decoders are flushed and what they held is still yielded.
    """

    def __init__(
        self, path: Path, container: av.container.InputContainer, streams: list[av.Stream]
    ) -> None:
        self.path = path
        self.container = container
        self.streams = streams
        for other in container.streams:
            if other not in streams:
                other.discard = Discard.all  # not even read
        for stream in streams:
            stream.codec_context.thread_count = DECODER_THREADS
        self.failures = {stream.index: 0 for stream in streams}
        self.first_error: dict[int, Exception] = {}
        self.warnings: list[str] = []
        self._video_limit_pts: int | None = None  # video after this may be past the audio
        self._audio_packet: av.Packet | None = None  # the latest audio packet read
        self._frames: FrameSelector | None = None  # set by `skip_unused_frames`
        self._skipping = False  # the video decoder's skip_frame is NONREF

    def skip_unused_frames(self, video: av.VideoStream, frames: FrameSelector) -> None:
        """Let the video decoder skip non-reference frames that no window will use.

        Only one frame per second is kept, but every frame that others are predicted from must
        be decoded. A packet whose display interval (pts to pts + duration) holds no window
        centre is decoded with skip_frame NONREF: the decoder drops it if no other frame refers
        to it (most B-frames) and decodes it as usual otherwise, so the frames that are decoded,
        and the frames chosen, are exactly those of a full decode. Packets without a duration
        are always decoded. (Decoders that ignore skip_frame decode everything.)
        """
        time_base = video.time_base
        if time_base is None:
            return
        self._frames = frames
        self._video_context = video.codec_context
        # Seconds per tick, once: a packet's time_base is the stream's, built anew as a Fraction
        # on every access.
        self._video_tick_s = time_base.numerator / time_base.denominator

    def _skip_if_unused(self, packet: av.Packet) -> None:
        pts, duration = packet.pts, packet.duration
        unused = False
        if pts is not None and duration:
            frames, tick_s = self._frames, self._video_tick_s
            assert frames is not None
            unused = not frames.shows_a_centre(pts * tick_s, (pts + duration) * tick_s)
        if unused != self._skipping:
            self._video_context.skip_frame = "NONREF" if unused else "DEFAULT"
            self._skipping = unused

    def limit_video(self, video: av.VideoStream, audio_end_s: float) -> None:
        """Skip video packets more than VIDEO_MARGIN_S past the audio's end, as stated in the
        header and confirmed by the audio packets read so far (so that neither a wrong header
        nor audio stored after the video in the file loses frames)."""
        time_base = video.time_base
        if time_base is not None:
            tick_s = time_base.numerator / time_base.denominator  # float(time_base)
            self._video_limit_pts = int((audio_end_s + VIDEO_MARGIN_S) / tick_s)

    def __iter__(self) -> Iterator[tuple[av.Stream, list | None]]:
        try:
            # Only reading raises here: a packet that fails to decode is caught in _decoded.
            for packet in self.container.demux(self.streams):
                stream = packet.stream
                if stream.type == "audio":
                    self._audio_packet = packet
                elif self._past_audio(packet):
                    continue
                elif self._frames is not None:
                    self._skip_if_unused(packet)
                yield stream, self._decoded(stream, packet)
        except av.error.FFmpegError as error:
            self.warnings.append(f"reading stopped early: {error}")
            for stream in self.streams:
                yield stream, self._decoded(stream, None)
        for stream in self.streams:
            if self.failures[stream.index]:
                self.warnings.append(
                    f"skipped {self.failures[stream.index]} undecodable {stream.type} packet(s): "
                    f"{self.first_error[stream.index]}"
                )

    def _past_audio(self, video_packet: av.Packet) -> bool:
        limit_pts = self._video_limit_pts
        if limit_pts is None:
            return False
        pts = video_packet.pts
        if pts is None or pts <= limit_pts:
            return False
        audio = self._audio_packet
        if audio is None or audio.pts is None:
            return True
        audio_s = float(audio.pts * audio.time_base)
        return audio_s < float(video_packet.pts * video_packet.time_base) - VIDEO_MARGIN_S

    def _decoded(self, stream: av.Stream, packet: av.Packet | None) -> list | None:
        try:
            return stream.decode(packet)
        except av.error.FFmpegError as error:
            self.failures[stream.index] += 1
            self.first_error.setdefault(stream.index, error)
            return None


def _check_audio(audio: AudioConverter, demuxer: _Demuxer, stream: av.Stream) -> None:
    """Raise `MediaError` when a file gave no audio at all."""
    if audio.n_samples:
        return
    error = demuxer.first_error.get(stream.index)
    if error is not None:
        raise MediaError(f"audio does not decode ({error})")
    raise MediaError("audio stream has no samples")


def _log(path: Path, warnings: list[str]) -> None:
    for warning in warnings:
        logger.warning("%s: %s", path, warning)


def _truncation(
    path: Path, container: av.container.InputContainer, stream: av.Stream, decoded_s: float
) -> str | None:
    """A warning when the header of `path` promises more audio than `decoded_s` seconds."""
    promised = promised_s(path, container, stream)
    if promised - decoded_s <= TRUNCATION_TOLERANCE_S:
        return None
    return (
        f"truncated: its header promises {promised:.2f} s of audio, only {decoded_s:.2f} s "
        "decoded (kept)"
    )


def decode_audio(path: Path) -> np.ndarray:
    """Decode a file's audio to (samples,) float32 mono 16 kHz (libswresample via PyAV)."""
    path = Path(path)
    with _open(path) as container:
        stream = _audio_stream(container)
        demuxer = _Demuxer(path, container, [stream])
        audio = AudioConverter(_start_s(stream))
        chunks = []
        for _stream, frames in demuxer:
            if frames is None:
                audio.lost_packet()
                continue
            for frame in frames:
                chunks += audio.push(frame)
        chunks += audio.flush()
    _check_audio(audio, demuxer, stream)
    _log(path, demuxer.warnings)
    return np.concatenate(chunks).astype(np.float32, copy=False)


def iter_features(
    path: Path, block_windows: int = 256, frame_size: int = FRAME_SIZE, log_warnings: bool = True
) -> Iterator[MediaFeatures]:
    """Features of a media file in blocks of at most `block_windows` consecutive windows.

    Concatenating the blocks gives exactly `extract_features(path)`. A file that cannot be
    ingested raises `MediaError` before the first block (damage found later is skipped, see the
    module docstring); what was damaged is in the last block's `warnings`, and logged unless
    `log_warnings` is False (for a caller that reports them itself).
    """
    if block_windows < 1:
        raise ValueError("block_windows must be at least 1")
    path = Path(path)
    with _open(path) as container:
        audio_stream = _audio_stream(container)
        video_stream = _video_stream(container)
        origin_s = _start_s(audio_stream)
        audio = AudioConverter(origin_s)
        frames = None
        streams: list[av.Stream] = [audio_stream]
        if video_stream is not None:
            streams.append(video_stream)
            rate = video_stream.average_rate or video_stream.guessed_rate
            frames = FrameSelector(
                origin_s,
                frame_size,
                video_stream.sample_aspect_ratio,
                frame_duration_s=rate.denominator / rate.numerator if rate else 0.0,
            )
        demuxer = _Demuxer(path, container, streams)
        audio_end_s = _end_s(audio_stream)
        if video_stream is not None and audio_end_s is not None:
            demuxer.limit_video(video_stream, audio_end_s)
        if video_stream is not None and frames is not None:
            demuxer.skip_unused_frames(video_stream, frames)

        blocks = _Blocks(block_windows, frames)
        for stream, decoded in demuxer:
            if stream is audio_stream:
                if decoded is None:
                    audio.lost_packet()
                    continue
                for frame in decoded:
                    chunks = audio.push(frame)
                    if chunks:  # the converter hands out audio every few seconds
                        blocks.add_audio(chunks)
            elif frames is not None and decoded is not None:
                for frame in decoded:
                    frames.push(frame)
            # Blocks leave as soon as both streams are past them; the last one waits for the
            # end of the file, since only then is it known to be the last.
            if blocks.may_be_ready():
                yield from blocks.ready()
        blocks.add_audio(audio.flush())
        if frames is not None:
            frames.finish()
        _check_audio(audio, demuxer, audio_stream)
        duration_s = audio.n_samples / SAMPLE_RATE
        warnings = demuxer.warnings
        truncation = _truncation(path, container, audio_stream, duration_s)
        if truncation is not None:
            warnings.insert(0, truncation)
        if log_warnings:
            _log(path, warnings)
        yield from blocks.ready()
        last = blocks.last(duration_s)
        last.warnings = tuple(warnings)
        yield last


class _Blocks:
    """Cuts the 16 kHz audio into blocks of windows and pairs each window with its frame."""

    def __init__(self, block_windows: int, frames: FrameSelector | None) -> None:
        self.block_windows = block_windows
        self.frames = frames
        self.first_window = 0
        self._pending: list[np.ndarray] = []  # samples from first_window's start
        self._pending_len = 0
        self._block_samples = block_windows * WINDOW_STEP
        # A window after the block must be certain to exist, so the last block is never empty.
        self._ready_samples = self._block_samples + WINDOW_SAMPLES

    def add_audio(self, chunks: list[np.ndarray]) -> None:
        self._pending += chunks
        self._pending_len += sum(map(len, chunks))

    def may_be_ready(self) -> bool:
        """Whether there is audio for a full block (a cheap test before `ready`)."""
        return self._pending_len >= self._ready_samples

    def ready(self) -> Iterator[MediaFeatures]:
        """Full blocks whose audio and frames are known and that are not the last block."""
        block_samples = self._block_samples
        while self._pending_len >= self._ready_samples and (
            self.frames is None or self.frames.ready(self.first_window + self.block_windows - 1)
        ):
            samples = np.concatenate(self._pending)
            self._pending = [samples[block_samples:]]
            self._pending_len = len(self._pending[0])
            yield self._block(samples[:block_samples], duration_s=None)

    def last(self, duration_s: float) -> MediaFeatures:
        """The final block, from all remaining audio (zero-padded to one window if shorter)."""
        if len(self._pending) == 1:  # often, for a file shorter than a converter batch
            samples = self._pending[0]
        elif self._pending:
            samples = np.concatenate(self._pending)
        else:
            samples = np.zeros(0, np.float32)
        return self._block(samples, duration_s)

    def _block(self, samples: np.ndarray, duration_s: float | None) -> MediaFeatures:
        logmel = logmel_windows(samples)
        n = len(logmel)
        time_s = np.arange(self.first_window, self.first_window + n, dtype=np.float64)
        if self.frames is not None:
            images, has_frame = self.frames.take(self.first_window, n)
        else:
            images, has_frame = None, np.zeros(n, dtype=bool)
        self.first_window += n
        return MediaFeatures(
            logmel=logmel,
            frames=images,
            has_frame=has_frame,
            time_s=time_s,
            duration_s=float(self.first_window) if duration_s is None else duration_s,
        )


def extract_features(path: Path, frame_size: int = FRAME_SIZE) -> MediaFeatures:
    """All features of a media file (see `MediaFeatures`); raises `MediaError` on bad input."""
    blocks = list(iter_features(path, frame_size=frame_size))
    if len(blocks) == 1:  # a file under block_windows seconds: nothing to join
        return blocks[0]
    frames = blocks[0].frames
    return MediaFeatures(
        logmel=np.concatenate([b.logmel for b in blocks]),
        frames=None if frames is None else np.concatenate([b.frames for b in blocks]),
        has_frame=np.concatenate([b.has_frame for b in blocks]),
        time_s=np.concatenate([b.time_s for b in blocks]),
        duration_s=blocks[-1].duration_s,
        warnings=blocks[-1].warnings,
    )
