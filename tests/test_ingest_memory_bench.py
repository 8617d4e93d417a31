"""benchmarks/ingest_memory.py: its long video is what it claims, and its peaks count every
process of a run (the long runs themselves take minutes and are not part of the test suite)."""

from __future__ import annotations

import sys
from pathlib import Path

import av
import pytest

import coincide
from bench_helpers import load_benchmark


def test_long_video_has_the_length_and_streams_it_claims(tmp_path) -> None:
    bench = load_benchmark("ingest_memory")
    path = bench.write_long_video(tmp_path / "six.mkv", minutes=0.1)
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, video.width, video.height) == ("mpeg4", 64, 48)
        assert (audio.codec_context.name, audio.rate) == ("pcm_s16le", 16000)
        pictures = sum(1 for _ in container.decode(video))
    assert pictures == 6 * bench.FPS


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux")
def test_the_largest_peak_counts_orphaned_grandchildren() -> None:
    """Ingest's workers are grandchildren no process waits for (children of the forkserver):
    here a process starts one that outlives it and fills 300 MB."""
    bench = load_benchmark("ingest_memory")
    grandchild = "import time; b = b'x' * 300_000_000; time.sleep(0.3)"
    parent = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {grandchild!r}])"

    main_mb, largest_mb = bench.peaks_mb([sys.executable, "-c", parent])

    assert main_mb < 100
    assert 300e6 / 2**20 < largest_mb < 400  # MiB


def test_peak_rss_of_an_ingest(tmp_path) -> None:
    bench = load_benchmark("ingest_memory")
    path = bench.write_long_video(tmp_path / "six.mkv", minutes=0.1)

    main_mb, largest_mb, seconds = bench.peak_rss_mb(path, tmp_path / "store", workers=1)

    assert len(coincide.open_store(tmp_path / "store")) == 6
    assert 50 < main_mb == largest_mb < 16_000  # one process; torch alone is hundreds of MB
    assert seconds > 0
