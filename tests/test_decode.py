"""Decoding every promised container and codec, frame/window alignment, and bad input."""

import logging
import os
import shutil
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import mediagen
from coincide.errors import MediaError
from coincide.media.decode import (
    FRAME_SIZE,
    MEDIA_EXTENSIONS,
    MediaFeatures,
    decode_audio,
    extract_features,
    iter_features,
)
from coincide.media.frames import FrameSelector
from coincide.media.frontend import N_FRAMES, N_MELS, SAMPLE_RATE, logmel_windows
from coincide.media.promise import wav_promised_s

torch.set_num_threads(1)

SECONDS = 4


def tone_band(second: int) -> int:
    """The mel band where the tone of `second` peaks, from the frontend on a clean sine."""
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    sine = np.sin(2 * np.pi * mediagen.tone_hz(second) * t).astype(np.float32)
    return int(logmel_windows(sine)[0].mean(axis=1).argmax())


def peak_bands(features: MediaFeatures) -> list[int]:
    return [int(window.mean(axis=1).argmax()) for window in features.logmel]


def nearest_colour(image: np.ndarray) -> int:
    """Index in mediagen.COLOURS of the colour closest to the image's mean."""
    mean = image.reshape(-1, 3).mean(axis=0)
    return int(np.linalg.norm(np.array(mediagen.COLOURS) - mean, axis=1).argmin())


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One file per container/codec pair: colour(k) on screen, tone_hz(k) sounding in second k."""
    folder = tmp_path_factory.mktemp("media")
    files = {}
    for name, (suffix, *_) in mediagen.VIDEO_FORMATS.items():
        files[name] = mediagen.write_video(folder / f"video{suffix}", name, seconds=SECONDS)
    for name, (suffix, *_) in mediagen.AUDIO_FORMATS.items():
        files[f"audio-{name}"] = mediagen.write_audio(
            folder / f"audio{suffix}", name, seconds=SECONDS, channels=2
        )
    return files


def test_tone_bands_are_distinct() -> None:
    # Otherwise the alignment tests below could not tell seconds apart.
    bands = [tone_band(k) for k in range(SECONDS)]
    assert len(set(bands)) == SECONDS


@pytest.mark.parametrize("name", list(mediagen.VIDEO_FORMATS))
def test_video_windows_get_their_own_second_of_sound_and_picture(
    media: dict[str, Path], name: str
) -> None:
    features = extract_features(media[name])

    assert features.logmel.shape == (SECONDS, N_MELS, N_FRAMES)
    assert features.logmel.dtype == np.float32
    assert features.frames is not None
    assert features.frames.shape == (SECONDS, FRAME_SIZE, FRAME_SIZE, 3)
    assert features.frames.dtype == np.uint8
    assert features.has_frame.tolist() == [True] * SECONDS
    np.testing.assert_array_equal(features.time_s, np.arange(SECONDS, dtype=np.float64))
    assert features.duration_s == pytest.approx(SECONDS, abs=0.06)
    assert peak_bands(features) == [tone_band(k) for k in range(SECONDS)]
    for k in range(SECONDS):
        assert nearest_colour(features.frames[k]) == k
        # Lossy coding moves a solid colour by a few levels only.
        assert np.abs(features.frames[k].astype(int) - mediagen.colour(k)).max() <= 12


@pytest.mark.parametrize("name", list(mediagen.AUDIO_FORMATS))
def test_audio_only_files_give_windows_without_frames(media: dict[str, Path], name: str) -> None:
    features = extract_features(media[f"audio-{name}"])

    assert features.frames is None
    assert features.has_frame.tolist() == [False] * SECONDS
    assert features.duration_s == pytest.approx(SECONDS, abs=0.06)
    assert peak_bands(features) == [tone_band(k) for k in range(SECONDS)]


def test_every_extension_is_generated() -> None:
    suffixes = {s for s, *_ in mediagen.VIDEO_FORMATS.values()}
    suffixes |= {s for s, *_ in mediagen.AUDIO_FORMATS.values()}
    assert suffixes == MEDIA_EXTENSIONS


def test_decode_audio_is_16khz_mono_float(media: dict[str, Path]) -> None:
    waveform = decode_audio(media["mp4"])

    assert waveform.dtype == np.float32
    assert waveform.ndim == 1
    assert len(waveform) == pytest.approx(SECONDS * SAMPLE_RATE, abs=0.06 * SAMPLE_RATE)
    # The downmix is the mean of the channels: the 0.5-amplitude stereo tone stays at 0.5.
    assert np.abs(waveform[SAMPLE_RATE : 2 * SAMPLE_RATE]).max() == pytest.approx(0.5, abs=0.02)


def resampled_frame_by_frame(path: Path) -> np.ndarray:
    """The reference decoding: PyAV's resampler fed one decoded frame at a time."""
    resampler = av.AudioResampler(
        format="flt", layout="mono", rate=SAMPLE_RATE, options={"rematrix_maxval": "1.0"}
    )
    chunks = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
    chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    return np.concatenate(chunks)


@pytest.mark.parametrize(
    ("name", "rate", "channels"),
    [("m4a", 44100, 2), ("mp3", 22050, 1), ("flac", 16000, 2), ("m4a", 16000, 1)],
)
def test_batched_resampling_equals_frame_by_frame(
    tmp_path: Path, name: str, rate: int, channels: int
) -> None:
    # The last case is already float mono at 16 kHz and skips the resampler altogether.
    path = mediagen.write_audio(
        tmp_path / f"a{mediagen.AUDIO_FORMATS[name][0]}", name, 6.0, channels=channels, rate=rate
    )

    waveform = decode_audio(path)

    np.testing.assert_allclose(waveform, resampled_frame_by_frame(path), atol=1e-6)


def test_stereo_and_mono_copies_decode_alike(tmp_path: Path) -> None:
    stereo = decode_audio(mediagen.write_audio(tmp_path / "stereo.wav", "wav", 2.0, channels=2))
    mono = decode_audio(mediagen.write_audio(tmp_path / "mono.wav", "wav", 2.0, channels=1))

    np.testing.assert_allclose(stereo, mono, atol=1e-4)


@pytest.mark.parametrize("block_windows", [1, 2, 3, 256])
def test_blocks_concatenate_to_extract_features(tmp_path: Path, block_windows: int) -> None:
    path = mediagen.write_video(tmp_path / "seven.mkv", "mkv", seconds=7.0)
    whole = extract_features(path)

    blocks = list(iter_features(path, block_windows=block_windows))

    remainder = [7 % block_windows] if 7 % block_windows else []
    assert [len(block) for block in blocks] == [block_windows] * (7 // block_windows) + remainder
    assert len(whole) == 7
    np.testing.assert_array_equal(np.concatenate([b.logmel for b in blocks]), whole.logmel)
    np.testing.assert_array_equal(np.concatenate([b.frames for b in blocks]), whole.frames)
    np.testing.assert_array_equal(np.concatenate([b.time_s for b in blocks]), whole.time_s)
    np.testing.assert_array_equal(np.concatenate([b.has_frame for b in blocks]), whole.has_frame)
    assert blocks[-1].duration_s == whole.duration_s
    for block in blocks[:-1]:
        assert block.duration_s == block.time_s[-1] + 1


def test_short_audio_gives_one_padded_window(tmp_path: Path) -> None:
    features = extract_features(mediagen.write_video(tmp_path / "short.mp4", seconds=0.5))

    assert len(features) == 1
    assert features.has_frame.tolist() == [True]
    assert nearest_colour(features.frames[0]) == 0
    assert features.duration_s == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("name", ["mp4", "mkv", "webm"])
def test_variable_frame_rate_takes_the_frame_on_screen_at_each_centre(
    tmp_path: Path, name: str
) -> None:
    path = mediagen.write_vfr_video(tmp_path / f"vfr{mediagen.VIDEO_FORMATS[name][0]}", name)
    features = extract_features(path)

    times = np.array(mediagen.VFR_FRAME_TIMES)
    n_video_windows = 5  # the last frame (4.4 s to 4.5 s) is on screen at 4.48, none at 5.48
    assert features.has_frame.tolist() == [True] * n_video_windows + [False]
    for k in range(n_video_windows):
        shown_at = times[times <= k + 0.48].max()
        assert nearest_colour(features.frames[k]) == int(shown_at)
    assert not features.frames[n_video_windows:].any()


def write_b_frame_video(path: Path, fps: int = 25, seconds: int = 4) -> Path:
    """H.264 with B-frames (3, pyramid), every frame a different grey: level 20 + 2 i."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.codec_context.thread_count = 1
        video.options = {"bframes": "3", "b-pyramid": "normal"}
        sound = container.add_stream("aac", rate=SAMPLE_RATE)
        sound.layout = "mono"
        for i in range(seconds * fps):
            grey = np.full((48, 64, 3), 20 + 2 * i, np.uint8)
            frame = av.VideoFrame.from_ndarray(grey, format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        signal = mediagen.tone(seconds, SAMPLE_RATE)
        samples = av.AudioFrame.from_ndarray(signal, format="flt", layout="mono")
        samples.sample_rate, samples.pts = SAMPLE_RATE, 0
        container.mux(sound.encode(samples))
        container.mux(sound.encode(None))
    return path


def test_unused_non_reference_frames_are_skipped_without_changing_the_features(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_b_frame_video(tmp_path / "b-frames.mp4")
    pushed: list[int] = []
    push = FrameSelector.push

    def counting_push(self: FrameSelector, frame: av.VideoFrame) -> None:
        pushed[-1] += 1
        push(self, frame)

    monkeypatch.setattr(FrameSelector, "push", counting_push)
    pushed.append(0)
    skipping = extract_features(path)
    pushed.append(0)
    monkeypatch.setattr("coincide.media.decode._Demuxer.skip_unused_frames", lambda *a: None)
    full = extract_features(path)

    assert pushed[1] == 100  # a full decode gives every frame
    assert pushed[0] < 90  # non-reference frames no window uses were not decoded
    np.testing.assert_array_equal(skipping.frames, full.frames)
    np.testing.assert_array_equal(skipping.logmel, full.logmel)
    np.testing.assert_array_equal(skipping.has_frame, full.has_frame)
    # The frame on screen at each centre k + 0.48 s is frame floor(25 (k + 0.48)).
    greys = [round((image.astype(float).mean() - 20) / 2) for image in skipping.frames]
    assert greys == [12, 37, 62, 87]


def test_video_shorter_than_audio_leaves_later_windows_without_frames(tmp_path: Path) -> None:
    path = mediagen.write_video(tmp_path / "short video.mp4", seconds=5, video_seconds=2.2)
    features = extract_features(path)

    assert features.has_frame.tolist() == [True, True, False, False, False]
    assert not features.frames[2:].any()
    assert peak_bands(features) == [tone_band(k) for k in range(5)]


def test_late_audio_is_aligned_with_the_picture_on_the_container_clock(tmp_path: Path) -> None:
    path = mediagen.write_video(tmp_path / "late.mkv", "mkv", seconds=3, audio_delay_s=1.0)
    features = extract_features(path)

    # The sound of window k (tone k) plays while colour k + 1 is on screen.
    assert peak_bands(features)[:2] == [tone_band(0), tone_band(1)]
    assert [nearest_colour(features.frames[k]) for k in range(2)] == [1, 2]


@pytest.mark.parametrize(
    ("rotation", "corners"),
    [
        # Counter-clockwise quarter turn: the top row becomes the left column.
        (90, {(10, 10): 1, (118, 10): 0, (64, 118): 2}),
        # Clockwise quarter turn (a phone held upright): the top row becomes the right column.
        (-90, {(10, 118): 0, (118, 118): 1, (64, 10): 2}),
        (180, {(118, 118): 0, (118, 10): 1, (10, 64): 2}),
    ],
)
def test_rotation_metadata_is_applied(
    tmp_path: Path, rotation: int, corners: dict[tuple[int, int], int]
) -> None:
    path = mediagen.write_rotated_video(tmp_path / "rotated.mp4", rotation)
    image = extract_features(path).frames[0]

    for (row, col), colour_index in corners.items():
        assert nearest_colour(image[row : row + 1, col : col + 1]) == colour_index


def test_non_square_pixels_are_shown_at_display_aspect(tmp_path: Path) -> None:
    image = extract_features(mediagen.write_anamorphic_video(tmp_path / "wide.mp4")).frames[0]

    # Displayed 128x64 -> 256x128, whose centre square is the green middle half of the frame;
    # read with square pixels it would show the red and blue side stripes too.
    interior = image[:, 8:120]
    assert nearest_colour(interior) == 1
    assert np.abs(interior.astype(int) - mediagen.COLOURS[1]).max() <= 12


@pytest.mark.parametrize("filename", ["clip with spaces.mp4", "ünïcødé 音声 #1.mkv"])
def test_unusual_file_names(tmp_path: Path, media: dict[str, Path], filename: str) -> None:
    source = media["mp4" if filename.endswith(".mp4") else "mkv"]
    path = tmp_path / filename
    shutil.copy(source, path)

    features = extract_features(path)

    assert len(features) == SECONDS
    assert features.has_frame.all()


def _write_bad(tmp_path: Path, case: str, media: dict[str, Path]) -> Path:
    if case == "empty":
        path = tmp_path / "empty.mp4"
        path.write_bytes(b"")
    elif case == "text":
        path = tmp_path / "notes.mp4"
        path.write_text("not a video\n" * 200)
    elif case == "random bytes":
        path = tmp_path / "noise.mp3"
        path.write_bytes(np.random.default_rng(0).bytes(40_000))
    elif case == "truncated mp4":
        # PyAV writes the mp4 index (moov) at the end: cut it off and nothing can be read.
        path = tmp_path / "cut.mp4"
        data = media["mp4"].read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "no audio":
        path = mediagen.write_video(tmp_path / "silent film.mp4", audio=False)
    elif case == "zero-length audio":
        path = mediagen.write_audio(tmp_path / "nothing.wav", "wav", seconds=0)
    elif case == "directory":
        path = tmp_path / "folder.mkv"
        path.mkdir()
    elif case == "missing":
        path = tmp_path / "gone.mp4"
    return path


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("empty", "empty file"),
        ("text", "not a media file"),
        ("random bytes", "not a media file"),
        ("truncated mp4", "not a media file, or its header is corrupt or missing"),
        ("no audio", "no audio stream"),
        ("zero-length audio", "audio stream has no samples"),
        ("directory", "not a regular file"),
        ("missing", "file not found"),
    ],
)
def test_bad_input_raises_media_error_with_reason(
    tmp_path: Path, media: dict[str, Path], case: str, reason: str
) -> None:
    path = _write_bad(tmp_path, case, media)

    with pytest.raises(MediaError, match=reason):
        extract_features(path)
    with pytest.raises(MediaError, match=reason):
        list(iter_features(path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_raises_media_error(tmp_path: Path, media: dict[str, Path]) -> None:
    path = tmp_path / "locked.mp4"
    shutil.copy(media["mp4"], path)
    path.chmod(0)

    with pytest.raises(MediaError, match="permission denied"):
        extract_features(path)


@pytest.mark.parametrize("name", ["wav", "mp3", "aac"])
def test_truncated_stream_is_ingested_up_to_the_cut(tmp_path: Path, name: str) -> None:
    full = mediagen.write_audio(tmp_path / f"full{mediagen.AUDIO_FORMATS[name][0]}", name, 4.0)
    cut = tmp_path / f"cut{full.suffix}"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])

    features = extract_features(cut)

    # About the first two seconds decode, and they are the right seconds.
    assert features.duration_s == pytest.approx(2.0, abs=0.15)
    assert peak_bands(features) == [tone_band(k) for k in range(len(features))]


@pytest.mark.parametrize("name", ["wav", "flac", "mp3"])
def test_a_file_cut_short_is_kept_with_a_warning(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Their headers state the length: the RIFF data size, FLAC's sample count, MP3's Xing frame
    # count. (An AAC stream has no header saying its length; FFmpeg's wav demuxer shortens the
    # duration it reports to the bytes present, so the WAV header is read by coincide itself.)
    full = mediagen.write_audio(tmp_path / f"full{mediagen.AUDIO_FORMATS[name][0]}", name, 4.0)
    cut = tmp_path / f"cut{full.suffix}"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])

    with caplog.at_level(logging.WARNING, logger="coincide.media.decode"):
        blocks = list(iter_features(cut, block_windows=1))

    warning = blocks[-1].warnings[0]
    decoded = blocks[-1].duration_s
    assert warning == (
        f"truncated: its header promises 4.00 s of audio, only {decoded:.2f} s decoded (kept)"
    )
    assert decoded < 2.2
    assert all(block.warnings == () for block in blocks[:-1])
    assert f"{cut}: {warning}" in caplog.text
    assert extract_features(cut).warnings == blocks[-1].warnings
    assert list(iter_features(full))[-1].warnings == ()


def test_intact_files_of_every_format_have_no_warnings(media: dict[str, Path]) -> None:
    for name, path in media.items():
        assert extract_features(path).warnings == (), name


def _wav_bytes(samples: np.ndarray, data_size: int | None = None, extra: bytes = b"") -> bytes:
    """A mono 16-bit 16 kHz RIFF WAVE; `data_size` overrides the data chunk's size field and
    `extra` chunks go between fmt and data."""
    pcm = np.round(samples * 32767).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, SAMPLE_RATE, SAMPLE_RATE * 2, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra
    size = len(pcm) if data_size is None else data_size
    body += b"data" + struct.pack("<I", size) + pcm
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_wav_headers_promise_their_data_size(tmp_path: Path) -> None:
    samples = np.sin(np.arange(3 * SAMPLE_RATE) / 5).astype(np.float32) * 0.5
    path = tmp_path / "a.wav"
    # An odd-sized chunk before the data is padded to an even size.
    odd = b"junk" + struct.pack("<I", 3) + b"abc\0"
    path.write_bytes(_wav_bytes(samples, extra=odd))
    assert wav_promised_s(path) == 3.0
    assert extract_features(path).warnings == ()

    # A header that promises 5 s over 3 s of samples (what a cut file has).
    path.write_bytes(_wav_bytes(samples, data_size=5 * SAMPLE_RATE * 2))
    assert wav_promised_s(path) == 5.0
    warnings = extract_features(path).warnings
    assert warnings == (
        "truncated: its header promises 5.00 s of audio, only 3.00 s decoded (kept)",
    )

    # A writer to a pipe leaves the size open: no promise, no warning.
    for open_size in (0, 0xFFFFFFFF):
        path.write_bytes(_wav_bytes(samples, data_size=open_size))
        assert wav_promised_s(path) is None
        assert extract_features(path).warnings == ()
    path.write_bytes(b"RIFF\0\0\0\0WAVEfmt ")
    assert wav_promised_s(path) is None


def test_corrupt_packets_are_skipped_and_replaced_by_silence(
    tmp_path: Path, media: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    # Overwrite bytes in the middle of the AAC data of an m4a: the index at the end of the file
    # still frames and times every packet, but some fail to decode.
    path = tmp_path / "damaged.m4a"
    data = bytearray(media["audio-m4a"].read_bytes())
    rng = np.random.default_rng(3)
    for index in rng.integers(len(data) * 2 // 5, len(data) * 3 // 5, 300):
        data[index] = rng.integers(0, 256)
    path.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING, logger="coincide.media.decode"):
        features = extract_features(path)

    assert "undecodable audio packet" in caplog.text
    # The timeline is kept: same length, and the undamaged first and last seconds are in place.
    assert len(features) == SECONDS
    bands = peak_bands(features)
    assert (bands[0], bands[-1]) == (tone_band(0), tone_band(SECONDS - 1))


def test_cover_art_is_not_a_video_stream(tmp_path: Path) -> None:
    features = extract_features(mediagen.write_mp3_with_cover(tmp_path / "song.mp3"))

    assert features.frames is None
    assert features.has_frame.tolist() == [False] * 3
    assert peak_bands(features) == [tone_band(k) for k in range(3)]


def _frame(colour_index: int, time_ms: int | None, duration_ms: int = 0) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(mediagen.solid_frame(mediagen.COLOURS[colour_index], 32, 32))
    frame.time_base = Fraction(1, 1000)
    frame.pts = time_ms
    frame.duration = duration_ms
    return frame


def test_frame_selector_picks_the_frame_on_screen_at_each_centre() -> None:
    selector = FrameSelector(
        origin_s=0.25, frame_size=16, sample_aspect_ratio=None, frame_duration_s=0.1
    )
    # Centres are at 0.73, 1.73, 2.73, 3.73 s.
    pushes = [(0, 500), (1, 700), (2, 700), (3, 1800), (4, 1500), (5, 2740)]
    for colour_index, time_ms in pushes[:3]:
        selector.push(_frame(colour_index, time_ms))
    assert not selector.ready(0)  # a later frame at or before 0.73 s may still come
    selector.push(_frame(*pushes[3]))
    assert selector.ready(1) and not selector.ready(2)
    selector.push(_frame(*pushes[4]))  # timestamp going back: ignored
    selector.push(_frame(*pushes[5], duration_ms=1000))
    selector.finish()

    images, has_frame = selector.take(0, 4)

    # 0.73: the second of two frames at 0.7 s; 1.73: the 1.8 s frame has not started, so that
    # one still shows; 2.73: the 1.8 s frame (the next starts at 2.74); 3.73: the last frame,
    # shown from 2.74 s for its 1 s duration.
    assert has_frame.tolist() == [True, True, True, True]
    assert [nearest_colour(image) for image in images] == [2, 2, 3, 5]
    assert images.shape == (4, 16, 16, 3)


@pytest.mark.parametrize(
    ("start_s", "end_s", "shows"),
    [
        (0.40, 0.48, True),  # the end is included
        (0.48, 0.52, True),
        (0.40, 0.47, False),
        (0.49, 1.47, False),
        (1.40, 1.50, True),
        (-3.0, 0.0, False),  # before window 0
        (-3.0, 0.50, True),
    ],
)
def test_frame_selector_knows_which_intervals_hold_a_window_centre(
    start_s: float, end_s: float, shows: bool
) -> None:
    selector = FrameSelector(0.0, 16, None, frame_duration_s=0.04)
    assert selector.shows_a_centre(start_s, end_s) is shows
    late = FrameSelector(2.0, 16, None, frame_duration_s=0.04)  # audio starts at 2 s
    assert late.shows_a_centre(start_s + 2.0, end_s + 2.0) is shows


def test_frame_selector_ends_the_last_frame_after_its_duration() -> None:
    selector = FrameSelector(
        origin_s=0.0, frame_size=8, sample_aspect_ratio=None, frame_duration_s=0.25
    )
    selector.push(_frame(1, 0))
    selector.push(_frame(2, 400))  # no duration stated: shows for 1 / frame rate = 0.25 s
    selector.finish()

    images, has_frame = selector.take(0, 2)

    assert has_frame.tolist() == [True, False]
    assert nearest_colour(images[0]) == 2
    assert not images[1].any()


@pytest.mark.parametrize("name", ["mp4", "mkv"])
def test_video_longer_than_audio_gives_windows_for_the_audio_only(
    tmp_path: Path, name: str
) -> None:
    path = mediagen.write_video(
        tmp_path / f"long{mediagen.VIDEO_FORMATS[name][0]}", name, seconds=2, video_seconds=8
    )

    features = extract_features(path)

    assert len(features) == 2
    assert features.has_frame.tolist() == [True, True]
    assert [nearest_colour(image) for image in features.frames] == [0, 1]


def test_each_stream_decodes_with_one_thread(tmp_path: Path, monkeypatch) -> None:
    """No per-file pool of decoder threads (FFmpeg's default, thread_count 0): ingestion already
    runs one file per worker process."""
    import coincide.media.decode as decode

    seen: list[int] = []
    original = decode._Demuxer.__init__

    def spy(self, path, container, streams):
        original(self, path, container, streams)
        seen.extend(stream.codec_context.thread_count for stream in streams)

    monkeypatch.setattr(decode._Demuxer, "__init__", spy)
    extract_features(mediagen.write_video(tmp_path / "video.mp4", seconds=2.0))
    assert seen == [1, 1]  # audio and video
