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

from coincide.run_folder import METRICS_FILE, RunFolder

DEMO_BUDGET = 20  # clusters labeled by the simulated annotator
DEMO_STEPS = 150  # fine-tuning steps (the CLI default, 2000, is for real data)


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
        ["make-bench", "--out", str(bench), "--preset", "demo", "--force"],
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
    _step("summarise the training store", ["info", "--store", str(train_store)])

    # 3. Self-supervised training: av -> coin -> joint with the `demo` preset (the default
    #    `laptop` preset with stages of at most 80 steps),
    #    measuring held-out query-by-example mAP along the way.
    run = out / "run"
    _step(
        "train the curriculum (demo preset: the default, short stages)",
        [
            "train",
            str(run),
            "--store",
            str(train_store),
            "--config",
            "demo",
            "--test-store",
            str(test_store),
            "--eval-every",
            "40",
        ],
    )
    # 4. Measure the representation: QbE retrieval and a shallow classifier (Table 1 metrics).
    _step(
        "evaluate the audio encoder",
        ["evaluate", str(run), "--test-store", str(test_store), "--store", str(train_store)],
    )
    # 5. Consolidation: cluster every window, label one member of 20 clusters (the store's
    #    clip labels play the annotator, as in the paper), propagate, fine-tune.
    _step("cluster every training window", ["cluster", str(run), "--store", str(train_store)])
    _step(
        "label 20 clusters (simulated annotator)",
        ["label", str(run), "--store", str(train_store), "--budget", str(DEMO_BUDGET)]
        + ["--oracle", "store"],
    )
    _step(
        "fine-tune the classifier on the propagated labels",
        ["finetune", str(run), "--store", str(train_store), "--strategy", "cluster"]
        + ["--test-store", str(test_store), "--steps", str(DEMO_STEPS)],
    )
    # 6. Table 3 in small: cluster labeling against random labeling at equal budgets.
    _step(
        "compare cluster labeling with random labeling (Table 3)",
        ["reproduce", "table3", str(run), "--store", str(train_store)]
        + ["--test-store", str(test_store), "--budget", "5,20", "--out", str(out / "table3")]
        + ["--steps", str(DEMO_STEPS)],
    )
    # 7. One page to look at: loss curves, cluster sizes, a map of the test embeddings, Table 3.
    _step(
        "write the report",
        ["report", str(run), "--test-store", str(test_store), "--table3", str(out / "table3")],
    )

    print(
        f"\ndemo finished in {time.monotonic() - started:.0f} s; outputs are in {out}/, "
        f"the report is {run / 'report.html'}"
    )
    print(summary(run, test_store, out / "table3"))


def summary(run: Path, test_store: Path, table3: Path) -> str:
    """The demo's results in a few lines, with one sentence on what they mean: f against the
    log-mel input on the held-out test media, and cluster labeling against random labeling at
    the smallest budget of Table 3."""
    import json

    import pandas as pd

    from coincide.evaluation.measure import evaluate_representation
    from coincide.evaluation.representations import LogMelRepresentation
    from coincide.store.features import open_store

    learned = json.loads((RunFolder(run).eval_dir / METRICS_FILE).read_text(encoding="utf-8"))
    logmel = evaluate_representation(LogMelRepresentation(), open_store(test_store), shallow=False)
    rows = pd.read_csv(table3 / "table3.csv")
    smallest = rows[rows["strategy"] == "cluster"]["budget"].min()
    at = rows[rows["budget"] == smallest].set_index("strategy")["mAP"]
    lines = [
        "",
        "results on the test videos (no gradient saw them):",
        f"  window QbE mAP (pairs within one video left out): f {learned['qbe_map']:.3f}, "
        f"log-mel {logmel['qbe_map']:.3f}",
        f"  clip QbE mAP (one mean embedding per video):      f "
        f"{learned['clip_qbe_map']:.3f}, log-mel {logmel['clip_qbe_map']:.3f}",
        f"  classifier mAP with {smallest} labels: cluster labeling {at['cluster']:.3f}, random "
        f"labels on the same f {at['random-pretrained']:.3f}, random labels from scratch "
        f"{at['random-scratch']:.3f}",
    ]
    better = learned["qbe_map"] > logmel["qbe_map"]
    pays = at["cluster"] >= at["random-pretrained"]
    lines.append(
        "  meaning: the self-supervised embedding "
        + ("retrieves held-out sounds better than" if better else "does not yet beat")
        + " the log-mel input it was trained from, and labeling one member per cluster "
        + ("beats" if pays else "does not beat")
        + f" labeling {smallest} random windows; the demo's 60 clips and short stages are "
        "a walk-through of the tool, benchmarks/README.md has the figures at benchmark scale."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
