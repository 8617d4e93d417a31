"""Does self-supervision generalize? Held-out retrieval of f against log-mel, row by row.

    .venv/bin/python benchmarks/learning.py --data-dir DATA --out DIR
        [--clips 300,1000] [--seeds 0,1] [--rows e,f,k] [--variants plain,augment]
        [--scenes independent,shared] [--config laptop] [--set key=value ...] [--bench-seed 11]

DATA holds fsdd/, mnist/ and esc50_subset/ (the avmnist sources). For every benchmark size
(`--clips`) and scene setting (`--scenes`, `coincide make-bench --scene`) the script composes an
avmnist benchmark once and ingests its train and test splits (all cached under DIR/bench/...).
For every variant (`--variants`: configuration overrides, see VARIANTS) it runs `coincide
reproduce table1` with the asked rows (e: AA only, f: AV only, k: the paper's curriculum
av -> coin -> joint, which Table 1's row k keeps; the laptop preset's aa -> coin -> joint is
measured with `coincide train` and probe.py) and `--seeds`; rows a (the label-triplet topline,
trained to its own held-out plateau) and b (log-mel) are trained once per benchmark and shared
by the variants.
Every figure is measured on media no gradient saw:

- window QbE: QbE mAP over the test store's windows, pairs of windows of one media left out
  (`coincide.evaluation.qbe.qbe_map(..., media=...)`), and its recovery between log-mel (0 %)
  and the topline (100 %), as Table 1 computes it;
- clip QbE: the same on one mean embedding per test clip;
- raw QbE: clip-level QbE on the FSDD test recordings (takes 0-4 of every speaker and digit, the
  raw WAV files, none of which is in any training clip), each recording the mean of its windows'
  embeddings, against the log-mel baseline (64 mel bins, the mean over the window's frames) and
  chance (the mean score of random vectors), measured in the same run;
- the best held-out coincidence loss (the stage criterion of the last stage), the steps trained,
  and the CPU minutes of the row's `reproduce table1` process (training and evaluation).

The table goes to DIR/learning.md and DIR/learning.csv; `--rank` adds the levers ranked by their
mean effect on raw QbE. Runs are resumable: a finished run is not trained again.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from coincide.evaluation.qbe import qbe_map
from coincide.media.decode import extract_features
from coincide.models.inference import load_model

# Configuration overrides of each variant, on top of --config. `augment` is the preset as it is
# (the laptop preset: augmentation, weight decay, the levers against the scene shortcut, stages
# of up to 2000 steps, B = 64); `plain` turns the regularisers off; `cap1000` is the preset with
# the stage cap it had before (1000 steps); `batch64` doubles the batch of then (B = 32), so
# every row has twice the negatives (and twice the ones that share the anchor's scene) to
# weight: it is `augment` now, and `batch32` is the default before it; `neighbours` makes half
# the batches of one media and its nearest media under f (coincide.train.neighbours). The
# levers (benchmarks/README.md, "Levers against the scene shortcut"): a cosine coincidence head,
# augmentation that takes colour, level and light away from two views of one media, and
# hard-negative weights. `before_levers` is the laptop preset as it was before them (cap 1000
# included, as they were measured); the `cosine*` variants add them back one by one.
SCENE_AUGMENT = [
    "augment.audio.filter_db=6",
    "augment.audio.gain_db=12",
    "augment.image.grayscale=0.5",
]
B32 = "data.batch_size=32"  # the batch of every variant measured before B = 64 became the default
BEFORE_LEVERS = [
    B32,
    "curriculum.max_steps=1000",
    "model.coincidence_head=mlp",
    "curriculum.hard_negatives=0.0",
    "augment.audio.filter_db=0.0",
    "augment.audio.gain_db=6.0",
    "augment.image.grayscale=0.0",
]
VARIANTS: dict[str, list[str]] = {
    "plain": ["augment={}", "model.head_dropout=0.0", "optim.weight_decay=0.0"],
    "augment": [],
    "cap1000": [B32, "curriculum.max_steps=1000"],
    "batch64": ["data.batch_size=64"],
    "batch32": [B32],
    "neighbours": [B32, "data.neighbour_batches=0.5"],
    "before_levers": BEFORE_LEVERS,
    "cosine": [*BEFORE_LEVERS, "model.coincidence_head=cosine"],
    "cosine_aug": [*BEFORE_LEVERS, "model.coincidence_head=cosine", *SCENE_AUGMENT],
    "cosine_hn": [*BEFORE_LEVERS, "model.coincidence_head=cosine", "curriculum.hard_negatives=1.0"],
    "cosine_aug_hn": [
        *BEFORE_LEVERS,
        "model.coincidence_head=cosine",
        *SCENE_AUGMENT,
        "curriculum.hard_negatives=1.0",
    ],
}
ROW_TITLES = {"e": "AA only (L_AA)", "f": "AV only (L_AV)", "k": "default curriculum (L_joint)"}
FSDD_TEST_TAKES = range(5)  # the FSDD README's official test split: takes 0-4
CHANCE_DRAWS = 20


# ---------------------------------------------------------------------------------------------
# The FSDD test recordings: raw clip-level QbE


def fsdd_test_recordings(data_dir: Path) -> tuple[list[Path], list[str]]:
    """The FSDD test takes (`DIGIT_SPEAKER_TAKE.wav`, take 0-4) and their digits."""
    folder = data_dir / "fsdd" / "recordings"
    paths, digits = [], []
    for path in sorted(folder.glob("*.wav")):
        digit, _speaker, take = path.stem.split("_")
        if int(take) in FSDD_TEST_TAKES:
            paths.append(path)
            digits.append(digit)
    if not paths:
        sys.exit(f"no FSDD test recordings (take 0-4) in {folder}; give --data-dir DATA.")
    return paths, digits


def recording_windows(paths: Sequence[Path]) -> list[np.ndarray]:
    """Log-mel windows `(n, 64, 96)` of each recording, decoded as ingestion decodes media."""
    return [extract_features(path).logmel for path in paths]


def raw_qbe(vectors: np.ndarray, digits: Sequence[str]) -> float:
    """Clip-level QbE mAP of one vector per recording (no two vectors share a recording)."""
    return qbe_map(vectors, [[d] for d in digits])


def raw_baselines(windows: list[np.ndarray], digits: Sequence[str]) -> dict[str, float]:
    """Log-mel (the mean over frames of each mel bin, averaged over a recording's windows) and
    chance (mean score of random Gaussian vectors, CHANCE_DRAWS draws)."""
    logmel = np.stack([w.mean(axis=2).mean(axis=0) for w in windows])
    rng = np.random.default_rng(0)
    chance = [raw_qbe(rng.normal(size=(len(windows), 64)), digits) for _ in range(CHANCE_DRAWS)]
    return {"logmel": raw_qbe(logmel, digits), "chance": float(np.mean(chance))}


def run_raw_qbe(run_dir: Path, windows: list[np.ndarray], digits: Sequence[str]) -> float:
    """Raw clip-level QbE of a run's f (its best held-out checkpoint)."""
    model = load_model(run_dir, device="cpu")
    vectors = np.stack([model.embed_logmel(w).mean(axis=0) for w in windows])
    return raw_qbe(vectors, digits)


# ---------------------------------------------------------------------------------------------
# Benchmarks and runs


def coincide(args: Sequence[str]) -> float:
    """Run one `coincide` command (its output streams through); returns its CPU minutes."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = [sys.executable, "-m", "coincide.cli", *args]
    print("$ coincide " + " ".join(args), flush=True)
    if subprocess.run(command, check=False).returncode != 0:
        sys.exit(f"`coincide {' '.join(args)}` failed; see its output above.")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / 60


def make_benchmark(
    out: Path, data_dir: Path, clips: int, scene: str, seed: int
) -> tuple[Path, Path, float]:
    """Compose and ingest one avmnist benchmark (cached); (train store, test store, seconds per
    composed clip, or nan when cached)."""
    folder = out / "bench" / f"avmnist-{clips}-{scene}-s{seed}"
    stores = folder / "stores"
    per_clip = float("nan")
    if not (folder / "media" / "labels_test.csv").is_file():
        started = time.monotonic()
        coincide(
            ["make-bench", "--out", str(folder / "media"), "--preset", "avmnist", "--data-dir"]
            + [str(data_dir), "--clips", str(clips), "--seed", str(seed), "--scene", scene]
            + ["--force"]
        )
        per_clip = (time.monotonic() - started) / clips
    for split in ("train", "test"):
        if not (stores / split / "store.json").is_file():
            coincide(
                ["ingest", str(folder / "media" / split), "--store", str(stores / split)]
                + ["--labels", str(folder / "media" / f"labels_{split}.csv"), "--workers", "2"]
            )
    return stores / "train", stores / "test", per_clip


def share_reference_rows(first: Path, other: Path, seeds: Sequence[int]) -> None:
    """Rows a and b are the same for every variant: link the other variants' run folders to the
    first variant's, so table1 finds them done and trains them once."""
    for row in ("a", "b"):
        for seed in seeds:
            target = first / "runs" / f"{row}-s{seed}"
            link = other / "runs" / f"{row}-s{seed}"
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(target.resolve(), target_is_directory=True)


def run_summary(run_dir: Path) -> dict[str, float | None]:
    """Steps and the best held-out criterion of the last stage, from RUN/state.json."""
    state_path = run_dir / "state.json"
    if not state_path.is_file():
        return {"steps": None, "best_held_out": None}
    finished = json.loads(state_path.read_text())["finished"]
    return {
        "steps": sum(r["steps"] for r in finished),
        "best_held_out": finished[-1]["best_val"] if finished else None,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--clips", default="300")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--rows", default="e,f,k")
    parser.add_argument("--variants", default="plain,augment")
    parser.add_argument("--scenes", default="shared,independent")
    parser.add_argument("--config", default="laptop")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--bench-seed", type=int, default=11)
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant {unknown[0]!r}; use {', '.join(VARIANTS)}.")

    paths, digits = fsdd_test_recordings(args.data_dir)
    cache = args.out / "fsdd_test_windows.npz"
    if cache.is_file():
        windows = list(np.load(cache).values())
    else:
        windows = recording_windows(paths)
        args.out.mkdir(parents=True, exist_ok=True)
        np.savez(cache, *windows)
    raw = raw_baselines(windows, digits)
    print(
        f"FSDD test takes: {len(paths)} recordings, raw clip QbE log-mel {raw['logmel']:.3f}, "
        f"chance {raw['chance']:.3f}",
        flush=True,
    )
    results: list[dict[str, object]] = []
    for clips in [int(c) for c in args.clips.split(",")]:
        for scene in [s.strip() for s in args.scenes.split(",")]:
            train_store, test_store, per_clip = make_benchmark(
                args.out, args.data_dir, clips, scene, args.bench_seed
            )
            bench = f"avmnist {clips} clips, scene {scene}"
            first: Path | None = None
            for variant in variants:
                table = args.out / "table1" / f"{clips}-{scene}" / variant
                if first is None:
                    first = table
                else:
                    share_reference_rows(first, table, seeds)
                overrides = [*VARIANTS[variant], *args.overrides]
                # One row per table1 call: its CPU time is the row's (a and b are done once).
                cpu: dict[str, float] = {}
                # Each call rewrites table1.csv with its own row (and a, b): read it after each.
                summary: dict[str, dict[str, str]] = {}
                for row in ["a", *rows]:
                    cpu[row] = coincide(
                        ["reproduce", "table1", "--store", str(train_store)]
                        + ["--test-store", str(test_store), "--out", str(table)]
                        + ["--config", args.config, "--row", row, "--seed", args.seeds]
                        + [arg for o in overrides for arg in ("--set", o)]
                    )
                    summary.update({r["row"]: r for r in _read_csv(table / "table1.csv")})
                for row in rows:
                    for seed in seeds:
                        run_dir = table / "runs" / f"{row}-s{seed}"
                        metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
                        results.append(
                            {
                                "bench": bench,
                                "seconds_per_clip": per_clip,
                                "variant": variant,
                                "row": row,
                                "seed": seed,
                                "window_qbe": metrics["qbe_map"],
                                "window_qbe_recovery": summary[row].get("qbe_map_recovery"),
                                "clip_qbe": metrics.get("clip_qbe_map"),
                                "raw_qbe": run_raw_qbe(run_dir, windows, digits),
                                "raw_logmel": raw["logmel"],
                                "raw_chance": raw["chance"],
                                "cpu_minutes_row": round(cpu[row], 1),
                                **run_summary(run_dir),
                            }
                        )
                        _write(args.out, results)
    _write(args.out, results)
    print((args.out / "learning.md").read_text(), flush=True)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _write(out: Path, results: list[dict[str, object]]) -> None:
    """DIR/learning.csv (one line per run) and DIR/learning.md (mean ± spread over seeds)."""
    out.mkdir(parents=True, exist_ok=True)
    if not results:
        return
    with open(out / "learning.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(results[0]))
        writer.writeheader()
        writer.writerows(results)
    lines = [
        "| benchmark | variant | row | seeds | window QbE | recovery | clip QbE | raw QbE "
        "(FSDD test) | raw margin / log-mel margin | best held-out | steps | CPU min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[object, object, object], list[dict[str, object]]] = {}
    for r in results:
        groups.setdefault((r["bench"], r["variant"], r["row"]), []).append(r)
    for (bench, variant, row), runs in groups.items():
        raw = [float(r["raw_qbe"]) for r in runs]
        chance, logmel = float(runs[0]["raw_chance"]), float(runs[0]["raw_logmel"])
        margin = [(v - chance) / (logmel - chance) for v in raw]
        lines.append(
            f"| {bench} | {variant} | {row} {ROW_TITLES.get(str(row), '')} | {len(runs)} "
            f"| {_spread([r['window_qbe'] for r in runs])} "
            f"| {_spread([r['window_qbe_recovery'] for r in runs[:1]], digits=0, percent=True)} "
            f"| {_spread([r['clip_qbe'] for r in runs])} | {_spread(raw)} "
            f"| {_spread(margin, digits=2)}x | {_spread([r['best_held_out'] for r in runs])} "
            f"| {_spread([r['steps'] for r in runs], digits=0)} "
            f"| {_spread([r['cpu_minutes_row'] for r in runs[:1]], digits=1)} |"
        )
    first = results[0]
    lines += [
        "",
        f"Raw QbE reference on the FSDD test takes: log-mel {float(first['raw_logmel']):.3f}, "
        f"chance {float(first['raw_chance']):.3f}. Recovery is of the seed means (Table 1); CPU "
        "minutes are the row's whole table1 call (all its seeds).",
    ]
    (out / "learning.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _spread(values: Sequence[object], digits: int = 3, percent: bool = False) -> str:
    numbers = [float(v) for v in values if v not in (None, "", "nan")]
    numbers = [v for v in numbers if np.isfinite(v)]
    if not numbers:
        return "n/a"
    mean = float(np.mean(numbers))
    unit = "%" if percent else ""
    text = f"{mean:.{digits}f}{unit}"
    if len(numbers) > 1:
        text += f" ± {float(np.std(numbers, ddof=1)):.{digits}f}"
    return text


if __name__ == "__main__":
    main()
