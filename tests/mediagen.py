"""Write small test media with PyAV whose content is known second by second.

In second k of every generated file the picture is the solid colour `colour(k)` and the sound is a
sine at `tone_hz(k)`, so a test can check that window k got second k's frame and sound. The
format tables cover every container / codec pair that ingestion promises to read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.stream import Disposition

# Well separated in RGB and still distinct after 4:2:0 chroma subsampling and lossy coding.
COLOURS = [
    (230, 30, 30),
    (30, 200, 30),
    (30, 30, 230),
    (230, 230, 30),
    (230, 30, 230),
    (30, 220, 220),
    (240, 240, 240),
    (20, 20, 20),
    (128, 128, 128),
    (240, 140, 20),
]

# container name -> (suffix, video codec, audio codec, audio sample rate)
VIDEO_FORMATS = {
    "mp4": (".mp4", "libx264", "aac", 44100),
    "mov": (".mov", "libx264", "aac", 48000),
    "mkv": (".mkv", "libx264", "libopus", 48000),
    "webm": (".webm", "libvpx-vp9", "libopus", 48000),
    "avi": (".avi", "mpeg4", "libmp3lame", 44100),
}
# name -> (suffix, audio codec, sample rate)
AUDIO_FORMATS = {
    "wav": (".wav", "pcm_s16le", 22050),
    "flac": (".flac", "flac", 44100),
    "mp3": (".mp3", "libmp3lame", 44100),
    "ogg": (".ogg", "libopus", 48000),
    "m4a": (".m4a", "aac", 44100),
    "aac": (".aac", "aac", 48000),
    "opus": (".opus", "libopus", 48000),
}


def colour(second: int) -> tuple[int, int, int]:
    """RGB colour of the picture during `second`."""
    return COLOURS[second % len(COLOURS)]


def tone_hz(second: int) -> float:
    """Frequency of the tone during `second`."""
    return 300.0 + 100.0 * (second % len(COLOURS))


def tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    """(channels, samples) float32 signal whose second k is a sine at tone_hz(k)."""
    t = np.arange(round(seconds * rate)) / rate
    freq = np.array([tone_hz(int(k)) for k in np.floor(t)])
    # Integrate frequency to phase so the signal is continuous across the changes.
    phase = 2 * np.pi * np.cumsum(freq) / rate
    signal = (0.5 * np.sin(phase)).astype(np.float32)
    return np.repeat(signal[None], channels, axis=0)


def _add_audio_stream(container, codec: str, rate: int, channels: int):
    stream = container.add_stream(codec, rate=rate)
    stream.layout = "mono" if channels == 1 else "stereo"
    # The first sample format the encoder takes among those `_audio_frame` can write.
    supported = [f.name for f in stream.codec_context.codec.audio_formats]
    stream.format = next(f for f in ("fltp", "flt", "s16") if f in supported)
    return stream


def _audio_frame(signal: np.ndarray, sample_format: str) -> av.AudioFrame:
    """A frame of a (channels, samples) float signal in fltp, flt or s16 (packed = interleaved)."""
    layout = "mono" if signal.shape[0] == 1 else "stereo"
    if sample_format == "fltp":
        return av.AudioFrame.from_ndarray(np.ascontiguousarray(signal), "fltp", layout)
    interleaved = np.ascontiguousarray(signal.T).reshape(1, -1)
    if sample_format == "s16":
        interleaved = np.round(interleaved * 32767).astype(np.int16)
    return av.AudioFrame.from_ndarray(interleaved, sample_format, layout)


def _audio_frames(stream, signal: np.ndarray, start_pts: int = 0) -> Iterator[av.AudioFrame]:
    """A (channels, samples) float signal as codec-sized frames timed from `start_pts` samples."""
    frame_size = stream.codec_context.frame_size or 4096
    for start in range(0, signal.shape[1], frame_size):
        frame = _audio_frame(signal[:, start : start + frame_size], stream.format.name)
        frame.sample_rate = stream.codec_context.sample_rate
        frame.pts = start_pts + start
        yield frame


def _write_audio(container: av.container.OutputContainer, stream, signal: np.ndarray) -> None:
    """Encode a (channels, samples) float signal and flush."""
    # Writes the header even when there are no samples (a valid file with an empty stream).
    container.start_encoding()
    for frame in _audio_frames(stream, signal):
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def write_audio(
    path: Path, name: str, seconds: float = 3.0, channels: int = 1, rate: int | None = None
) -> Path:
    """An audio-only file in format `name` of AUDIO_FORMATS, tone_hz(k) in second k; `rate`
    replaces the format's usual sample rate."""
    _suffix, codec, usual_rate = AUDIO_FORMATS[name]
    rate = rate or usual_rate
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        stream = _add_audio_stream(container, codec, rate, channels)
        _write_audio(container, stream, tone(seconds, rate, channels))
    return path


def solid_frame(rgb: tuple[int, int, int], width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8 image of one colour."""
    return np.broadcast_to(np.array(rgb, np.uint8), (height, width, 3)).copy()


def write_video(
    path: Path,
    name: str = "mp4",
    seconds: float = 4.0,
    fps: int = 10,
    width: int = 96,
    height: int = 64,
    audio: bool = True,
    video_seconds: float | None = None,
    frame_times: list[float] | None = None,
    image: Callable[[int], np.ndarray] | None = None,
    rotation: int | None = None,
    sample_aspect_ratio: Fraction | None = None,
    channels: int = 2,
    audio_delay_s: float = 0.0,
) -> Path:
    """A video in container `name` of VIDEO_FORMATS: colour(k) and tone_hz(k) in second k.

    video_seconds: length of the picture (default: as long as the sound).
    frame_times: explicit presentation times in seconds (variable frame rate), instead of fps.
    image: function (second -> (height, width, 3) uint8) replacing the solid colours.
    rotation: display-matrix rotation, counter-clockwise degrees (as PyAV's frame.rotation).
    sample_aspect_ratio: pixel aspect ratio written in the stream (non-square pixels).
    audio_delay_s: the sound starts this late on the container clock (the tone of its first
        second then plays while colour(1) is on screen, for a delay of 1 s).
    """
    _suffix, video_codec, audio_codec, rate = VIDEO_FORMATS[name]
    path = Path(path)
    video_seconds = seconds if video_seconds is None else video_seconds
    # Constant rate: time base 1/fps as a camera writes it (AVI knows no other); variable rate:
    # millisecond timestamps so that any time is written exactly.
    time_base = Fraction(1, fps) if frame_times is None else Fraction(1, 1000)
    if frame_times is None:
        frame_times = [i / fps for i in range(round(video_seconds * fps))]
    image = image or (lambda second: solid_frame(colour(second), width, height))
    with av.open(str(path), mode="w") as container:
        video = container.add_stream(video_codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.time_base = video.codec_context.time_base = time_base
        if sample_aspect_ratio is not None:
            video.codec_context.sample_aspect_ratio = sample_aspect_ratio
        if rotation is not None:
            video.set_display_rotation(rotation)
        audio_frames: Iterator[av.AudioFrame] = iter(())
        if audio:
            audio_stream = _add_audio_stream(container, audio_codec, rate, channels)
            signal = tone(seconds, rate, channels)
            audio_frames = _audio_frames(audio_stream, signal, round(audio_delay_s * rate))
        pending_audio = next(audio_frames, None)
        for time in frame_times:
            # Interleave the streams by time, as a camera writes them.
            while pending_audio is not None and pending_audio.time <= time:
                container.mux(audio_stream.encode(pending_audio))
                pending_audio = next(audio_frames, None)
            frame = av.VideoFrame.from_ndarray(image(int(time)), format="rgb24")
            frame.pts = round(time / time_base)
            frame.time_base = time_base
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio:
            while pending_audio is not None:
                container.mux(audio_stream.encode(pending_audio))
                pending_audio = next(audio_frames, None)
            container.mux(audio_stream.encode(None))
    return path


def quadrants(second: int, width: int = 64, height: int = 32) -> np.ndarray:
    """Red top-left, green top-right, blue bottom half: tells every rotation and mirror apart."""
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2, : width // 2] = COLOURS[0]
    image[: height // 2, width // 2 :] = COLOURS[1]
    image[height // 2 :] = COLOURS[2]
    return image


def write_rotated_video(path: Path, rotation: int, name: str = "mp4") -> Path:
    """A 64x32 `quadrants` video whose display matrix turns it `rotation` degrees (ccw)."""
    return write_video(
        path, name, seconds=2, width=64, height=32, image=quadrants, rotation=rotation
    )


def stripes(second: int, size: int = 64) -> np.ndarray:
    """Red left quarter, green middle half, blue right quarter."""
    image = np.zeros((size, size, 3), np.uint8)
    image[:, : size // 4] = COLOURS[0]
    image[:, size // 4 : 3 * size // 4] = COLOURS[1]
    image[:, 3 * size // 4 :] = COLOURS[2]
    return image


def write_anamorphic_video(path: Path, name: str = "mp4") -> Path:
    """64x64 coded `stripes` with 2:1 pixels: displayed 128x64, so a centre square is all green."""
    return write_video(
        path, name, seconds=2, width=64, height=64, image=stripes, sample_aspect_ratio=Fraction(2)
    )


# Irregular frame times (seconds) for a variable frame rate video: gaps of 20 ms to 1.2 s. The
# last frame lasts 0.1 s (1 / the nominal 10 fps), so it is still on screen at 4.48 s.
VFR_FRAME_TIMES = [0.0, 0.05, 0.9, 1.0, 1.3, 2.2, 3.1, 3.12, 3.2, 4.4]


def write_vfr_video(path: Path, name: str = "mp4", seconds: float = 6.0) -> Path:
    """A video with frames at VFR_FRAME_TIMES only, each coloured by the second it starts in."""
    return write_video(path, name, seconds=seconds, frame_times=VFR_FRAME_TIMES)


def write_mp3_with_cover(path: Path, seconds: float = 3.0) -> Path:
    """An mp3 whose ID3 tag holds cover art: a video stream marked as an attached picture."""
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        audio = _add_audio_stream(container, "libmp3lame", 44100, 1)
        cover = container.add_stream("mjpeg")
        cover.width, cover.height, cover.pix_fmt = 32, 32, "yuvj420p"
        cover.disposition = Disposition.attached_pic
        picture = av.VideoFrame.from_ndarray(solid_frame(COLOURS[0], 32, 32), format="rgb24")
        picture = picture.reformat(format="yuvj420p")
        picture.pts = 0
        packets = cover.encode(picture) + cover.encode(None)
        container.start_encoding()
        container.mux(packets)
        for frame in _audio_frames(audio, tone(seconds, 44100)):
            container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
    return path
