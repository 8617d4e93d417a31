"""Ingestion speed against bare PyAV decoding of the same files, measured in the same run.

    .venv/bin/python benchmarks/ingest.py [FOLDER] [--repeat N]

FOLDER is a benchmark folder of media files (default: the demo benchmark, composed into a
temporary folder with `coincide make-bench --preset demo`). Both sides run in this process on
one core's worth of work: ingestion with `--workers 1`, so that no child process does any of
its work, and both are measured in CPU seconds of this process (time.process_time, which counts
every thread, the decoders' included). The numbers are per core and do not depend on how many
cores the machine has:

- bare decoding: every audio and video frame of every file decoded by PyAV, nothing else;
- ingestion: `coincide ingest` into a new store (hashing, decoding, resampling, log-mel, frame
  sampling and resizing, writing chunks).

One-time costs are paid before the clocks start, on both sides alike: every file is decoded
once (file cache, decoder code) and one file is ingested into a scratch store (imports of the
decoder, torch, the parquet writer and the progress bar; the mel filter bank). The figures are
then the steady-state throughput a long ingestion run has. Each side's time is the fastest of
`--repeat` rounds, which alternate which side goes first; CPU time only grows with interference
(cache, memory bandwidth) from whatever else runs on the machine.

The bar (issue 2): ingestion at least 0.6 x the speed of bare decoding, and at least 200 x real
time per core. Exits 1 when below either.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
from rich.console import Console
from rich.table import Table

import coincide
from coincide.ingest import find_media
from coincide.ingest import run as ingest

MIN_RATIO_TO_DECODE = 0.6
MIN_REALTIME_PER_CORE = 200.0


def decode_only(path: Path) -> None:
    """Decode every audio and video frame of a file (the decoder's own work, no features)."""
    with av.open(str(path)) as container:
        streams = [*container.streams.audio[:1], *container.streams.video[:1]]
        for _frame in container.decode(*streams):
            pass


def demo_benchmark(out: Path) -> Path:
    """Compose the demo benchmark with the `coincide make-bench` command; returns its train set."""
    command = [sys.executable, "-m", "coincide.cli", "make-bench", str(out), "--preset", "demo"]
    print(f"composing the demo benchmark: {' '.join(command)}", flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return out / "train"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, nargs="?", help="Benchmark media folder.")
    parser.add_argument("--repeat", type=int, default=5, help="Rounds; the fastest counts.")
    args = parser.parse_args(argv)
    console = Console()

    with tempfile.TemporaryDirectory(prefix="coincide-bench-") as tmp:
        folder = args.folder if args.folder is not None else demo_benchmark(Path(tmp) / "bench")
        files = find_media([folder])
        if not files:
            sys.exit(f"no media files in {folder}; give a benchmark folder of videos.")

        # Warm-up outside the clocks (see the module docstring).
        for path in files:
            decode_only(path)
        ingest(files[:1], Path(tmp) / "warm-up", workers=1, console=Console(quiet=True))

        def decode_round() -> float:
            started = time.process_time()
            for path in files:
                decode_only(path)
            return time.process_time() - started

        def ingest_round(store_path: Path) -> float:
            started = time.process_time()
            ingest([folder], store_path, workers=1, console=Console(quiet=True))
            return time.process_time() - started

        decode_cpu = ingest_cpu = float("inf")
        rounds = max(args.repeat, 1)
        for round_ in range(rounds):
            store_path = Path(tmp) / f"store{round_}"
            if round_ % 2 == 0:
                decode_cpu = min(decode_cpu, decode_round())
                ingest_cpu = min(ingest_cpu, ingest_round(store_path))
            else:
                ingest_cpu = min(ingest_cpu, ingest_round(store_path))
                decode_cpu = min(decode_cpu, decode_round())
            if round_ < rounds - 1:
                shutil.rmtree(store_path)  # outside the clocks; keeps the page cache small

        store = coincide.open_store(store_path)
        media_s = float(store.media["duration_s"].sum())
        n_media, n_windows = len(store.media), len(store)

    hours = media_s / 3600
    decode_speed, ingest_speed = hours / decode_cpu, hours / ingest_cpu
    ratio = ingest_speed / decode_speed
    realtime = media_s / ingest_cpu

    table = Table(title=f"ingestion vs bare decoding: {n_media} files, {hours:.3f} h, {folder}")
    table.add_column("")
    table.add_column("CPU s", justify="right")
    table.add_column("media h / CPU s", justify="right")
    table.add_column("x real time / core", justify="right")
    table.add_row(
        "bare PyAV decode",
        f"{decode_cpu:.2f}",
        f"{decode_speed:.4f}",
        f"{media_s / decode_cpu:.0f}",
    )
    table.add_row("coincide ingest", f"{ingest_cpu:.2f}", f"{ingest_speed:.4f}", f"{realtime:.0f}")
    console.print(table)
    console.print(f"{n_windows} windows stored")
    console.print(
        f"ingest / decode speed: {ratio:.2f} (bar >= {MIN_RATIO_TO_DECODE}); "
        f"real time per core: {realtime:.0f}x (bar >= {MIN_REALTIME_PER_CORE:.0f}x)"
    )
    failures = []
    if ratio < MIN_RATIO_TO_DECODE:
        failures.append(f"ingestion runs at {ratio:.2f} of bare decoding speed")
    if realtime < MIN_REALTIME_PER_CORE:
        failures.append(f"ingestion runs at {realtime:.0f}x real time per core")
    if failures:
        console.print("BELOW THE BAR: " + "; ".join(failures))
        return 1
    console.print("ok: both bars met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
