"""What a benchmark folder says about itself: `bench.json` (machine-readable) and `README.md`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import coincide
from coincide.bench.benchmark import Benchmark
from coincide.bench.plan import ClipPlan
from coincide.bench.sources import SPLITS

PARAMETER_MEANINGS = {
    "clips": "train clips",
    "test_clips": "test clips",
    "seconds": "length of every clip, s",
    "seed": "seed of every random choice",
    "zipf": "class prior exponent: p_k proportional to 1 / rank^zipf (0 = uniform)",
    "density": "share of seconds in which an instance of the clip's class starts",
    "snr_db": "per-instance SNR range, dB: instance RMS over the clip's background RMS",
    "level_db": "per-clip background RMS range, dBFS (independent of the class)",
    "distractor_prob": "share of clips with one off-class second, in sound or in pictures only",
    "fps": "video frame rate",
    "size": "frame width and height, px",
    "sample_rate": "audio sample rate, Hz",
    "hold_s": "an image stays on screen this many whole seconds (range)",
    "image_scale": "image's longer side over the frame side (range)",
    "textures": "generated picture backgrounds in the train and test pools",
}


def _realised(plans: list[ClipPlan]) -> dict[str, dict[str, float]]:
    """Per split: share of seconds with a target onset, distractor clips per modality."""
    stats: dict[str, dict[str, float]] = {}
    for split in SPLITS:
        chosen = [p for p in plans if p.split == split]
        if not chosen:
            continue
        targets = sum(e.kind == "target" for p in chosen for e in p.sounds)
        stats[split] = {
            "clips": len(chosen),
            "target_onsets_per_second": targets / sum(p.seconds for p in chosen),
            "audio_distractor_clips": sum(
                any(e.kind == "distractor" for e in p.sounds) for p in chosen
            ),
            "image_distractor_clips": sum(
                any(h.kind == "distractor" for h in p.images) for p in chosen
            ),
        }
    return stats


def _class_counts(plans: list[ClipPlan], classes: list[str]) -> dict[str, dict[str, int]]:
    counts = {split: Counter(p.label for p in plans if p.split == split) for split in SPLITS}
    return {split: {c: counts[split][c] for c in classes} for split in SPLITS}


def write_bench_json(path: Path, bench: Benchmark) -> None:
    """bench.json: parameters, classes with prior and rank, realised counts, source notices."""
    params, classes, pairing, plans = bench.params, bench.classes, bench.pairing, bench.plans
    prior, rank, inputs = bench.prior, bench.rank, bench.inputs
    payload = {
        "coincide_version": coincide.__version__,
        "params": params.as_dict(),
        "classes": classes,
        "pairing": pairing,
        "prior": {c: float(p) for c, p in zip(classes, prior, strict=True)},
        "rank": {c: int(r) for c, r in zip(classes, rank, strict=True)},
        "class_counts": _class_counts(plans, classes),
        "realised": _realised(plans),
        "sources": inputs.notices,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")


def write_readme(path: Path, bench: Benchmark) -> None:
    """README.md: how the benchmark was made, from what, under which licenses."""
    params, classes, pairing, plans = bench.params, bench.classes, bench.pairing, bench.plans
    prior, rank, inputs, pools = bench.prior, bench.rank, bench.inputs, bench.pools
    counts = _class_counts(plans, classes)
    realised = _realised(plans)
    lines = [
        "# Benchmark videos composed by `coincide make-bench`",
        "",
        f"Made by coincide {coincide.__version__} with seed {params.seed}. The same command with "
        "the same seed and sources writes the same files (labels.csv and events.csv byte for "
        "byte, the same decoded audio and video).",
        "",
        "Each clip has one dominant class, drawn from a skewed (Zipf-like) class prior. Its sound "
        "keeps coming back, an instance (a real recording of that class) starting in most "
        "seconds, mixed over real ambient recordings from a pool shared by all clips; its "
        "pictures show images of the paired class, each held for a few seconds, over backgrounds "
        "from a shared pool. Some clips carry one second of another class in sound or in "
        "pictures only (a distractor). Background, level, picture background, pan and digit "
        "colour are drawn from a random stream that never sees the class. See docs/benchmark.md "
        "in the coincide repository for the reasoning behind each default.",
        "",
        "## Files",
        "",
        f"- `train/clip_NNNNN.mp4` ({params.clips}) and `test/clip_NNNNN.mp4` "
        f"({params.test_clips}): {params.seconds} s each, H.264 {params.size}x{params.size} "
        f"yuv420p at {params.fps} fps, AAC mono at {params.sample_rate} Hz. File names carry no "
        "label.",
        "- `labels.csv`: `path,label`, one row per clip of both splits, paths relative to this "
        "folder; `labels_train.csv` and `labels_test.csv` hold the rows of one split each: "
        "`coincide ingest OUT/train --store STORE --labels OUT/labels_train.csv`.",
        "- `events.csv`: `clip,onset,offset,class,modality,kind,source`, one row per sound "
        "instance (modality `audio`) and per shown image (modality `image`); `kind` is `target` "
        "or `distractor`; times in seconds; `source` names the recording or image used.",
        "- `bench.json`: the parameters, prior and counts below, machine-readable.",
        "",
        "## Classes and prior",
        "",
        f"p_k proportional to 1 / rank^{params.zipf} over a seeded random ranking of the classes.",
        "",
        "| class | image label | rank | prior | train clips | test clips |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for k, c in enumerate(classes):
        lines.append(
            f"| {c} | {pairing[c]} | {rank[k]} | {prior[k]:.3f} | {counts['train'][c]} "
            f"| {counts['test'][c]} |"
        )
    lines += ["", "## Parameters", "", "| parameter | value | meaning |", "| --- | --- | --- |"]
    for name, value in params.as_dict().items():
        lines.append(f"| {name} | {value} | {PARAMETER_MEANINGS[name]} |")
    lines += ["", "Realised:", ""]
    for split, stats in realised.items():
        lines.append(
            f"- {split}: {stats['target_onsets_per_second']:.2f} target onsets per second, "
            f"{stats['audio_distractor_clips']} clips with a sound distractor, "
            f"{stats['image_distractor_clips']} with a picture distractor."
        )
    lines += [
        "",
        "## Sources, splits and licenses",
        "",
        "Train and test clips draw from disjoint sources: sounds and images by their split "
        "(FSDD: the official split by take; MNIST: train vs test images; CSVs: their `split` "
        "column, or a stable hash of the file or `group`), background recordings by source "
        "recording, picture backgrounds from separate pools.",
        "",
        "| split | sounds | images | background recordings | picture backgrounds |",
        "| --- | --- | --- | --- | --- |",
    ]
    for split, pool in pools.items():
        lines.append(
            f"| {split} | {sum(map(len, pool.sounds.values()))} "
            f"| {sum(map(len, pool.images.values()))} | {len(pool.backgrounds)} "
            f"| {len(pool.textures)} |"
        )
    lines += ["", "Sources (each keeps its own license; attribute them when you share clips):", ""]
    lines += [f"- {notice}" for notice in inputs.notices]
    if any(source.attribution for source in inputs.backgrounds):
        lines += ["", "Background recordings:", ""]
        lines += [
            f"- {source.ref} ({source.split}): {source.attribution}"
            for source in inputs.backgrounds
            if source.attribution
        ]
    if not inputs.image_backgrounds:
        lines += [
            "",
            f"Picture backgrounds are textured noise generated from seed {params.seed}.",
        ]
    path.write_text("\n".join(lines) + "\n")
