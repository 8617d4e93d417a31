"""benchmarks/ingest.py: measures both sets and reports each bar; camera-like clips are what
they claim to be."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

import mediagen
from bench_helpers import load_benchmark


def texture(second: int) -> np.ndarray:
    """A 64 x 64 picture with detail (as the digits of the demo clips), new each second."""
    rng = np.random.default_rng(second)
    return np.kron(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), np.ones((4, 4, 1), np.uint8))


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    for k in range(2):
        mediagen.write_video(
            folder / f"clip {k}.mp4",
            seconds=3.0,
            fps=4,
            width=64,
            height=64,
            image=texture,
        )
    return folder


def test_camera_like_clips_are_640x360_30fps_h264_with_b_frames(clips: Path, tmp_path) -> None:
    bench = load_benchmark("ingest")
    out = bench.camera_like(sorted(clips.glob("*.mp4")), tmp_path / "camera", 1, seconds=2)
    (clip,) = sorted(out.glob("*.mp4"))
    with av.open(str(clip)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, video.width, video.height) == ("h264", 640, 360)
        assert video.average_rate == 30
        assert (audio.codec_context.name, audio.rate, audio.channels) == ("aac", 48000, 2)
        types = [str(frame.pict_type) for frame in container.decode(video)]
    assert len(types) == 60
    assert any(t in ("B", "3", "PictureType.B") for t in types)


def test_run_reports_the_ratio_and_the_real_time_bar(clips: Path, capsys) -> None:
    bench = load_benchmark("ingest")
    code = bench.main([str(clips), "--repeat", "1"])
    out = capsys.readouterr().out
    assert "bare PyAV decode" in out and "coincide ingest" in out
    assert "ingest / decode speed:" in out and "bar >= 200x" in out
    assert code in (0, 1)
    assert ("BELOW THE BAR" in out) == (code == 1)


def test_default_decoder_threads_flag_ingests_with_ffmpegs_threading(
    clips: Path, monkeypatch, capsys
) -> None:
    import coincide.media.decode as decode

    monkeypatch.setattr(decode, "DECODER_THREADS", decode.DECODER_THREADS)  # restored after
    seen: set[int] = set()
    original = decode._Demuxer.__init__

    def spy(self, path, container, streams):
        original(self, path, container, streams)
        seen.update(stream.codec_context.thread_count for stream in streams)

    monkeypatch.setattr(decode._Demuxer, "__init__", spy)
    bench = load_benchmark("ingest")
    bench.main([str(clips), "--repeat", "1", "--default-decoder-threads"])
    assert "coincide ingest" in capsys.readouterr().out
    assert seen == {0}
