"""Ingestion streams a file to the store block by block: memory bounded by the block, not by the
file's length, and nothing of a file that fails half-way (a NaN, a kill -9) ever visible.

Long files here are plain 16 kHz WAVs (written with the wave module: fast to write and decode),
several blocks of `ingest_workers.BLOCK_WINDOWS` long.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
import wave
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import coincide
import coincide.stages.ingest_workers as workers_module
from coincide.cli.commands import app
from test_ingest import _descendants, _running, store_content, write_float_wav

RATE = 16000
WINDOW_BYTES = 64 * 96 * 4  # one stored log-mel window


def write_wav(path: Path, seconds: float, hz: float = 440.0) -> Path:
    """A mono 16-bit 16 kHz WAV of a sine whose pitch rises by 20 Hz a second."""
    t = np.arange(round(seconds * RATE)) / RATE
    signal = 0.4 * np.sin(2 * np.pi * (hz * t + 10 * t**2))
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(RATE)
        f.writeframes(np.round(signal * 32767).astype("<i2").tobytes())
    return path


def ingest(*args: str | Path):
    return CliRunner().invoke(app, ["ingest", *map(str, args)])


def _peak_traced_bytes(media: Path, store: Path) -> int:
    """Peak bytes allocated (numpy arrays included) while ingesting `media` in this process."""
    tracemalloc.start()
    try:
        result = ingest(media, "--store", store)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.exit_code == 0, result.output
    return peak


def test_ingest_memory_is_bounded_by_the_block_not_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(workers_module, "BLOCK_WINDOWS", 16, raising=False)
    short = write_wav(tmp_path / "short.wav", 60)
    long = write_wav(tmp_path / "long.wav", 360)
    assert ingest(short, "--store", tmp_path / "warm-up").exit_code == 0  # imports, caches
    short_peak = _peak_traced_bytes(short, tmp_path / "short")
    long_peak = _peak_traced_bytes(long, tmp_path / "long")

    assert len(coincide.open_store(tmp_path / "long")) == 360
    # Held whole, the long file's log-mel features alone are 300 windows (7.4 MB) more than
    # the short file's, twice over (the blocks and their concatenation); streamed, the long
    # file needs what the short one needs: a block of 16 windows, the decoder's buffers.
    more = (360 - 60) * WINDOW_BYTES
    assert long_peak < short_peak + more / 10, (long_peak, short_peak)


@pytest.fixture(scope="module")
def half_bad(tmp_path_factory) -> Path:
    """Two good files around one whose audio turns to NaN at 300 s, after the first block."""
    folder = tmp_path_factory.mktemp("half bad")
    write_wav(folder / "a.wav", 20, hz=300)
    tone = np.sin(np.arange(320 * RATE, dtype=np.float32) / 7) * 0.3
    tone[300 * RATE + 100] = np.nan
    write_float_wav(folder / "b.wav", tone)
    write_wav(folder / "c.wav", 25, hz=600)
    return folder


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_file_that_turns_bad_half_way_leaves_nothing_in_the_store(half_bad, tmp_path, workers):
    assert workers_module.BLOCK_WINDOWS < 300  # the NaN comes after a block was written
    reference = tmp_path / "reference"
    good = [half_bad / "a.wav", half_bad / "c.wav"]
    assert ingest(*good, "--store", reference).exit_code == 0

    store_path = tmp_path / "store"
    result = ingest(half_bad, "--store", store_path, "--workers", workers)

    assert result.exit_code == 0, result.output
    report = json.loads((store_path / "ingest_report.json").read_text())
    assert [(Path(s["path"]).name, s["reason"]) for s in report["skipped"]] == [
        ("b.wav", "its audio decodes to non-finite values (NaN or inf) at 300.00 s")
    ]
    # a and c share one chunk, where b's first block had been written before the NaN.
    assert coincide.open_store(store_path).chunk_ids() == [0]
    assert store_content(store_path) == store_content(reference)
    assert not [
        p.name
        for p in [*store_path.iterdir(), *(store_path / "chunks").iterdir()]
        if p.name.startswith(".tmp-")
    ]


def _partial(store: Path) -> bool:
    """Whether a file's first block is on disk, in an open chunk or a worker's spool."""
    files = [*store.glob("chunks/.tmp-*/logmel.npy"), *store.glob(".tmp-spool-*/*/logmel.raw")]
    block = workers_module.BLOCK_WINDOWS * WINDOW_BYTES
    sizes = []
    for file in files:
        with contextlib.suppress(FileNotFoundError):  # committed or discarded meanwhile
            sizes.append(file.stat().st_size)
    return any(size >= block for size in sizes)


@pytest.fixture(scope="module")
def long_media(tmp_path_factory) -> tuple[Path, dict]:
    """A folder of a short and a 10-minute file, and the content of a store made from it."""
    folder = tmp_path_factory.mktemp("long media")
    write_wav(folder / "a short.wav", 5)
    write_wav(folder / "b long.wav", 600, hz=200)
    reference = tmp_path_factory.mktemp("reference") / "store"
    assert ingest(folder, "--chunk-windows", "1", "--store", reference).exit_code == 0
    return folder, store_content(reference)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("workers", ["1", "2"])
def test_kill_9_in_the_middle_of_a_file_resumes_exactly(long_media, tmp_path, workers):
    folder, reference = long_media
    args = [str(folder), "--chunk-windows", "1", "--workers", workers]

    store_path = tmp_path / "store"
    command = [
        sys.executable,
        "-m",
        "coincide.cli",
        "ingest",
        *args,
        "--store",
        str(store_path),
    ]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    helpers: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None and not _partial(store_path):
            helpers = _descendants(child.pid)
            time.sleep(0.005)
        assert child.poll() is None, "ingest ended before a block of the long file was written"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    deadline = time.monotonic() + 20  # the workers notice within a second and exit
    while time.monotonic() < deadline and any(_running(pid) for pid in helpers):
        time.sleep(0.05)

    # The long file's first block was on disk; nothing of it is in the store.
    media = coincide.open_store(store_path).media if (store_path / "store.json").exists() else None
    assert media is None or "b long.wav" not in " ".join(media["media_path"])
    # The rerun in this process, with one worker: chunks do not depend on the number.
    result = ingest(*args[:-2], "--store", store_path)
    assert result.exit_code == 0, result.output
    assert store_content(store_path) == reference
    leftovers = [*store_path.glob(".tmp-*"), *store_path.glob("chunks/.tmp-*")]
    assert not leftovers, leftovers
