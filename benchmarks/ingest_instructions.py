"""Ingestion against bare PyAV decoding in CPU instructions (callgrind), where CPU time is noisy.

    .venv/bin/python benchmarks/ingest_instructions.py FOLDER [--clips 20]

benchmarks/ingest.py measures CPU seconds, which on a shared virtual machine vary by 20 - 40 %
between rounds for the same work. This script counts the instructions each side executes under
valgrind's callgrind, which does not depend on what else the machine runs: the same
measurement as ingest.py (`--clips` media files of FOLDER, after a first one that warms up,
decoded by bare PyAV, and ingested with `--workers 1` into a new store), each side in its own
process (both at once), with the one-time costs
(imports, the mel filter bank, a first file decoded and ingested) left out of the count by
starting callgrind's instrumentation only around the measured work. Prints both counts, their
ratio (bare / ingest: the instruction analogue of ingest.py's speed ratio) and the
instructions by shared object of each side. Needs valgrind with its headers and a C compiler;
runs at about 1/50 of normal speed (minutes for 20 demo clips).

Instructions are not time: they leave out cache misses and how many instructions a cycle runs,
so the figure complements ingest.py rather than replacing it.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Two functions a Python process calls through ctypes around the measured work.
CONTROL_C = """
#include <valgrind/callgrind.h>
void start(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; }
void stop(void) { CALLGRIND_STOP_INSTRUMENTATION; CALLGRIND_DUMP_STATS; }
"""

# The measured process: `python -c WORKER CONTROL_LIB MODE FOLDER CLIPS SCRATCH`.
WORKER = """
import ctypes, shutil, sys
from pathlib import Path
import av, torch
from rich.console import Console
from coincide.stages.ingest import IngestSettings, find_media, run as ingest

torch.set_num_threads(1)
control = ctypes.CDLL(sys.argv[1])
mode, folder, clips, scratch = sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
files = find_media([folder])
first, work = files[0], files[1 : 1 + clips]

def decode(path):
    with av.open(str(path)) as container:
        streams = [*container.streams.audio[:1], *container.streams.video[:1]]
        for _frame in container.decode(*streams):
            pass

decode(first)
ingest(IngestSettings((first,), scratch / "warm-up", workers=1), console=Console(quiet=True))
shutil.rmtree(scratch / "warm-up")
control.start()
if mode == "decode":
    for path in work:
        decode(path)
else:
    ingest(IngestSettings(tuple(work), scratch / "store", workers=1), console=Console(quiet=True))
control.stop()
"""


def start(mode: str, folder: Path, clips: int, control: Path, tmp: Path) -> subprocess.Popen:
    """Start one side under callgrind (its profile: tmp/callgrind.MODE.N)."""
    scratch = tmp / mode
    scratch.mkdir()
    command = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={tmp / f'callgrind.{mode}'}",
        sys.executable,
        "-c",
        WORKER,
        str(control),
        mode,
        str(folder),
        str(clips),
        str(scratch),
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def profile_of(mode: str, process: subprocess.Popen, tmp: Path) -> Path:
    """Wait for one side; returns the profile its stop() dumped."""
    if process.wait() != 0:
        sys.exit(f"the {mode} side failed under valgrind (exit {process.returncode}).")
    dumps = sorted(tmp.glob(f"callgrind.{mode}.*"))  # the dump at stop(), numbered
    if not dumps:
        sys.exit(f"callgrind wrote no profile for {mode}; is valgrind working here?")
    return dumps[-1]


def by_object(profile: Path) -> tuple[int, collections.Counter[str]]:
    """(total instructions, instructions per shared object) of a callgrind profile."""
    text = subprocess.run(
        ["callgrind_annotate", "--threshold=100", str(profile)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return parse_annotate(text)


def parse_annotate(text: str) -> tuple[int, collections.Counter[str]]:
    """(total, per shared object) from callgrind_annotate's output: rows
    `1,234 ( 5.00%)  file:function [/path/libfoo.so]`, summed by the bracketed object."""
    total = re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text)
    if total is None or "file:function" not in text:
        sys.exit("cannot read callgrind_annotate's output")
    objects: collections.Counter[str] = collections.Counter()
    for line in text.split("file:function", 1)[1].splitlines():
        row = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)", line)
        if row:
            obj = re.search(r"\[([^\]]*)\]\s*$", row.group(2))
            name = obj.group(1).split("/")[-1] if obj else "?"
            objects[name] += int(row.group(1).replace(",", ""))
    return int(total.group(1).replace(",", "")), objects


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="Benchmark media folder (e.g. demo train).")
    parser.add_argument("--clips", type=int, default=20, help="Files measured (after the first).")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="Copy the two callgrind profiles here (for callgrind_annotate).",
    )
    args = parser.parse_args(argv)
    for tool in ("valgrind", "callgrind_annotate", "cc"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed; this benchmark needs valgrind and a C compiler.")
    with tempfile.TemporaryDirectory(prefix="coincide-callgrind-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "control.c").write_text(CONTROL_C)
        control = tmp / "libcontrol.so"
        subprocess.run(
            ["cc", "-O1", "-shared", "-fPIC", "-o", str(control), str(tmp / "control.c")],
            check=True,
        )
        print(f"callgrind: bare decoding and ingestion of {args.clips} files (minutes)")
        running = {m: start(m, args.folder, args.clips, control, tmp) for m in ("decode", "ingest")}
        profiles = {m: profile_of(m, p, tmp) for m, p in running.items()}
        totals = {m: by_object(profile) for m, profile in profiles.items()}
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            for mode, profile in profiles.items():
                shutil.copy(profile, args.keep / f"callgrind.{mode}")
            print(f"profiles kept in {args.keep}: callgrind.decode, callgrind.ingest")
    (decode_total, decode_objects), (ingest_total, ingest_objects) = (
        totals["decode"],
        totals["ingest"],
    )
    print(f"{'instructions (millions)':34s} {'bare decode':>12s} {'ingest':>12s}")
    for name in sorted(set(decode_objects) | set(ingest_objects), key=lambda n: -ingest_objects[n]):
        decode_m, ingest_m = decode_objects[name] / 1e6, ingest_objects[name] / 1e6
        if max(decode_m, ingest_m) >= 1:
            print(f"{name[:34]:34s} {decode_m:12.1f} {ingest_m:12.1f}")
    print(f"{'total':34s} {decode_total / 1e6:12.1f} {ingest_total / 1e6:12.1f}")
    print(
        f"{args.clips} files: ingest / decode speed in instructions: "
        f"{decode_total / ingest_total:.3f} (ingest.py's bar on time: >= 0.6)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
