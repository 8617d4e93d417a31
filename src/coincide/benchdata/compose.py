"""`coincide make-bench`: compose benchmark videos from real recordings and real images.

Reads top to bottom: parameters and sources, the design (`benchmark.plan_benchmark`: pools and
scenes per split, the class prior, one plan per clip holding every random choice), then rendering
and encoding (optionally in parallel), then the tables and the README.
"""

from __future__ import annotations

import csv
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress

from coincide.benchdata.benchmark import plan_benchmark
from coincide.benchdata.mp4 import write_mp4
from coincide.benchdata.nuisances import CLIP_COLUMNS, clip_rows
from coincide.benchdata.params import BenchParams
from coincide.benchdata.plan import ClipPlan
from coincide.benchdata.presets import PRESET_CLIPS, SourceArgs, resolve_inputs
from coincide.benchdata.readme import summarise, write_bench_json, write_readme
from coincide.benchdata.render import Material, render_audio, render_frames
from coincide.benchdata.sources import SPLITS
from coincide.console import EtaColumn
from coincide.console import progress as progress_display
from coincide.errors import UserError

# Everything `run` writes, and so everything `--force` may remove.
OUTPUTS = (
    *SPLITS,
    "labels.csv",
    *(f"labels_{split}.csv" for split in SPLITS),
    "events.csv",
    "clips.csv",
    "README.md",
    "bench.json",
)


def run(
    out: Path,
    params: BenchParams,
    sources: SourceArgs,
    *,
    workers: int = 1,
    force: bool = False,
) -> int:
    """Write a benchmark into `out`: train/, val/ and test/ mp4 clips, labels.csv (and one per
    split), events.csv, clips.csv, README.md and bench.json. Returns the exit code (0)."""
    console = Console(stderr=True)
    started = time.perf_counter()

    # Parameters and sources.
    params = _with_clip_counts(params, sources.preset)
    params.check()
    inputs = resolve_inputs(sources)
    _prepare_out(out, force)

    # Every random choice, made up front: the pools of each split, the prior, one plan per clip.
    bench = plan_benchmark(params, inputs)

    # Render and encode every clip.
    for split in bench.pools:
        (out / split).mkdir(parents=True, exist_ok=True)
    _write_clips(out, bench.plans, bench.material, params, workers, console)
    seconds = time.perf_counter() - started
    timing = {
        "seconds": round(seconds, 1),
        "seconds_per_clip": round(seconds / max(len(bench.plans), 1), 3),
        "workers": workers,
    }

    # Tables and notes.
    write_labels(out / "labels.csv", bench.plans)
    # One per split as well, so that ingesting one split's folder matches every row.
    for split in bench.pools:
        write_labels(out / f"labels_{split}.csv", [p for p in bench.plans if p.split == split])
    write_events(out / "events.csv", bench.plans, bench.material)
    write_clip_table(out / "clips.csv", bench.plans, bench.material)
    summary = summarise(bench, timing)
    write_bench_json(out / "bench.json", summary)
    write_readme(out / "README.md", bench, summary)
    console.print(
        f"wrote {params.clips} train + {params.val_clips} val + {params.test_clips} test clips "
        f"of {params.seconds} s to {out} in {seconds:.1f} s "
        f"({timing['seconds_per_clip']:.3f} s per clip, {workers} worker(s))"
    )
    return 0


def _with_clip_counts(params: BenchParams, preset: str | None) -> BenchParams:
    """Fill clip counts left open: the preset's, else a fifth of the train clips for validation
    and a third for test."""
    clips, val_clips, test_clips = params.clips, params.val_clips, params.test_clips
    if clips is None:
        if preset not in PRESET_CLIPS:
            raise UserError("--clips is required without a preset; give the number of train clips")
        clips, preset_val, preset_test = PRESET_CLIPS[preset]
        val_clips = preset_val if val_clips is None else val_clips
        test_clips = preset_test if test_clips is None else test_clips
    if val_clips is None:
        val_clips = clips // 5
    if test_clips is None:
        test_clips = max(1, clips // 3)
    return replace(params, clips=clips, val_clips=val_clips, test_clips=test_clips)


def _prepare_out(out: Path, force: bool) -> None:
    """Refuse to mix two benchmarks in one folder; with `force`, remove only what we write."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; give a folder for the benchmark")
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not force:
        raise UserError(
            f"{out} already holds a benchmark ({', '.join(existing)}); pass --force to replace it"
        )
    for name in existing:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _render_clip(plan: ClipPlan, material: Material, params: BenchParams, out: Path) -> str:
    audio = render_audio(plan, material, params.sample_rate)
    frames = render_frames(plan, material, params.fps, params.size)
    write_mp4(out / plan.path, frames, params.fps, audio, params.sample_rate)
    return plan.path


# The banks of a worker process, set once by `_init_worker` rather than sent with every clip.
_worker_state: dict[str, object] = {}


def _init_worker(material: Material, params: BenchParams, out: Path) -> None:
    _worker_state.update(material=material, params=params, out=out)


def _render_in_worker(plan: ClipPlan) -> str:
    return _render_clip(
        plan, _worker_state["material"], _worker_state["params"], _worker_state["out"]
    )


def _write_clips(
    out: Path,
    plans: list[ClipPlan],
    material: Material,
    params: BenchParams,
    workers: int,
    console: Console,
) -> None:
    columns = (*Progress.get_default_columns()[:2], MofNCompleteColumn(), EtaColumn())
    with progress_display(*columns, console=console) as progress:
        task = progress.add_task("composing clips", total=len(plans))
        if workers <= 1:
            for plan in plans:
                _render_clip(plan, material, params, out)
                progress.advance(task)
            return
        with ProcessPoolExecutor(
            max_workers=workers, initializer=_init_worker, initargs=(material, params, out)
        ) as pool:
            for _ in pool.map(_render_in_worker, plans, chunksize=4):
                progress.advance(task)


def write_labels(path: Path, plans: list[ClipPlan]) -> None:
    """labels.csv: `path,label`, one row per clip, paths relative to the CSV's folder."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "label"])
        writer.writerows([plan.path, plan.label] for plan in plans)


def write_clip_table(path: Path, plans: list[ClipPlan], material: Material) -> None:
    """clips.csv: one row per clip with its split, class, scene and other nuisances."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CLIP_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(clip_rows(plans, material))


def write_events(path: Path, plans: list[ClipPlan], material: Material) -> None:
    """events.csv: `clip,onset,offset,class,modality,kind,source`, one row per placed sound
    instance or shown image, times in seconds from the clip's start."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["clip", "onset", "offset", "class", "modality", "kind", "source"])
        for plan in plans:
            rows = [
                (e.onset, e.offset, e.label, "audio", e.kind, material.sounds.sources[e.source].ref)
                for e in plan.sounds
            ] + [
                (h.onset, h.offset, h.label, "image", h.kind, material.images[h.source].ref)
                for h in plan.images
            ]
            for onset, offset, label, modality, kind, ref in sorted(rows):
                writer.writerow(
                    [plan.path, f"{onset:.4f}", f"{offset:.4f}", label, modality, kind, ref]
                )
