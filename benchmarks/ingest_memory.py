"""Peak memory of `coincide ingest` against the length of the file it ingests.

    .venv/bin/python benchmarks/ingest_memory.py [--minutes 5,60] [--workers 1,2]

For each length, one video is written (Matroska, MPEG-4 Part 2 picture at 64 x 48 and 2 fps,
16 kHz PCM sound of noise; cheap to write and decode, so the figure is the features' memory, not
a decoder's) and ingested into a new store by a fresh `coincide ingest` process. Two figures per
run, both peak resident memory (ru_maxrss, Linux):

- main: the ingesting process itself (`wait4` of it);
- largest: the largest process of the whole ingest, decoding workers and forkserver included.
  Workers are children of the forkserver, which the ingesting process does not wait for, so the
  measuring wrapper makes itself their "child subreaper" (prctl): orphaned processes of the run
  are reparented to it and reaped, and their peaks reach its RUSAGE_CHILDREN.

Every window keeps a log-mel window (24.6 KB) and a 128 x 128 frame (49 KB) in the store, about
265 MB per hour of media; a file held whole on its way to the store costs that much memory and
more, per hour. The reference is the shortest file, measured in the same run: the bar is that the
longest file's largest process peaks at most 1.25 x the shortest's, for each worker count (memory
bounded by the block and chunk sizes, not by the file's length). Exits 1 when it is missed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from rich.console import Console
from rich.table import Table

MAX_RATIO = 1.25
RATE = 16000
FPS = 2

# Runs the command given in argv and prints {"main": KB, "largest": KB} (ru_maxrss is in KB).
WRAPPER = """
import ctypes, json, os, resource, subprocess, sys
PR_SET_CHILD_SUBREAPER = 36
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    sys.exit("cannot become a child subreaper (Linux only)")
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
stderr = child.stderr.read()
_, status, usage = os.wait4(child.pid, 0)
child.returncode = os.waitstatus_to_exitcode(status)
while True:  # the run's orphans (forkserver, workers) exit within seconds: reap them all
    try:
        os.wait()
    except ChildProcessError:
        break
if child.returncode:
    sys.exit(stderr.decode(errors="replace")[-2000:])
largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"main": usage.ru_maxrss, "largest": largest}))
"""


def write_long_video(path: Path, minutes: float, seed: int = 0) -> Path:
    """A Matroska file of `minutes` of noise sound and slowly changing solid-colour pictures."""
    rng = np.random.default_rng(seed)
    seconds = round(minutes * 60)
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("mpeg4", rate=FPS)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.time_base = video.codec_context.time_base = Fraction(1, FPS)
        audio = container.add_stream("pcm_s16le", rate=RATE)
        audio.layout = "mono"
        for second in range(seconds):
            noise = rng.normal(0, 3000, RATE).clip(-32768, 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(noise[None], "s16", "mono")
            frame.sample_rate, frame.pts = RATE, second * RATE
            container.mux(audio.encode(frame))
            for k in range(FPS):
                colour = np.full((48, 64, 3), (second * 7) % 256, np.uint8)
                picture = av.VideoFrame.from_ndarray(colour, format="rgb24")
                picture.pts = second * FPS + k
                container.mux(video.encode(picture))
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
    return path


def peaks_mb(command: list[str]) -> tuple[float, float]:
    """Run `command`; (peak resident MiB of its process, of the largest process it started,
    orphans included)."""
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, *command], capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"{' '.join(command[-6:])} failed: {done.stderr.strip()}")
    peaks = json.loads(done.stdout.splitlines()[-1])
    return peaks["main"] / 1024, peaks["largest"] / 1024


def peak_rss_mb(media: Path, store: Path, workers: int) -> tuple[float, float, float]:
    """(peak resident MiB of the ingesting process, of the largest process of the run, wall s)."""
    command = [sys.executable, "-c", "from coincide.cli.commands import main; main()", "ingest"]
    command += [str(media), "--store", str(store), "--workers", str(workers)]
    t0 = time.perf_counter()
    main_mb, largest_mb = peaks_mb(command)
    return main_mb, largest_mb, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", default="5,60", help="File lengths, comma-separated.")
    parser.add_argument("--workers", default="1,2", help="Worker counts, comma-separated.")
    args = parser.parse_args(argv)
    minutes = sorted(float(m) for m in args.minutes.split(","))
    workers = [int(w) for w in args.workers.split(",")]
    if len(minutes) < 2:
        parser.error("give at least two lengths, e.g. --minutes 5,60")
    console = Console()
    table = Table(title="peak resident memory of coincide ingest by file length")
    for column in ("minutes", "workers", "main MiB", "largest MiB", "vs shortest", "wall s"):
        table.add_column(column, justify="right")
    missed = []
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for m in minutes:
            console.print(f"writing a {m:g}-minute video", highlight=False)
            files[m] = write_long_video(Path(tmp) / f"long-{m:g}min.mkv", m)
        for w in workers:
            reference = None
            for m in minutes:
                console.print(f"ingesting {m:g} minutes with {w} worker(s)", highlight=False)
                main_mb, largest_mb, seconds = peak_rss_mb(
                    files[m], Path(tmp) / f"store-{m:g}-{w}", w
                )
                reference = reference or largest_mb
                ratio = largest_mb / reference
                if m == minutes[-1] and ratio > MAX_RATIO:
                    missed.append(f"{w} worker(s): {ratio:.2f}x")
                table.add_row(
                    f"{m:g}",
                    str(w),
                    f"{main_mb:,.0f}",
                    f"{largest_mb:,.0f}",
                    f"{ratio:.2f}x",
                    f"{seconds:.0f}",
                )
    console.print(table)
    verdict = f"MISSED ({'; '.join(missed)})" if missed else "met"
    console.print(
        f"bar: the longest file's largest process at most {MAX_RATIO}x the shortest's: {verdict}"
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
