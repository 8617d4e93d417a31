"""`make demo`: the whole pipeline, end to end, on the bundled demo data, on CPU.

Each step is the `coincide` command a user would type; it is printed before it runs, so the
demo doubles as a walk-through of the tool.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path


def _step(title: str, args: list[str]) -> None:
    """Run one `coincide` command, echoing it; stop the demo if it fails."""
    command = [sys.executable, "-m", "coincide.cli", *args]
    print(f"\n== {title}\n$ coincide {shlex.join(args)}", flush=True)
    started = time.monotonic()
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        sys.exit(f"demo step '{title}' failed (exit {result.returncode}); see the output above.")
    print(f"   ({time.monotonic() - started:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="Output folder.")
    args = parser.parse_args(argv)
    out: Path = args.out
    bench, train_store, test_store = out / "bench", out / "train_store", out / "test_store"
    started = time.monotonic()

    # 1. Benchmark videos composed from real spoken digits, handwritten digits and ambient sound.
    _step(
        "compose the demo benchmark videos",
        ["make-bench", str(bench), "--preset", "demo", "--force"],
    )
    # 2. Ingest: log-mel windows and 1 Hz frames into feature stores (resumable, idempotent).
    _step(
        "ingest the training videos",
        [
            "ingest",
            str(bench / "train"),
            "--store",
            str(train_store),
            "--labels",
            str(bench / "labels_train.csv"),
        ],
    )
    _step(
        "ingest the test videos",
        [
            "ingest",
            str(bench / "test"),
            "--store",
            str(test_store),
            "--labels",
            str(bench / "labels_test.csv"),
        ],
    )
    _step("summarise the training store", ["info", str(train_store)])

    print(f"\ndemo finished in {time.monotonic() - started:.0f} s; outputs are in {out}/")


if __name__ == "__main__":
    main()
