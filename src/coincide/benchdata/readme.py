"""What a benchmark folder says about itself: `bench.json` (machine-readable) and `README.md`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd

import coincide
from coincide.benchdata.benchmark import Benchmark
from coincide.benchdata.nuisances import class_leak, clip_rows
from coincide.benchdata.plan import ClipPlan
from coincide.benchdata.sources import SPLITS

PARAMETER_MEANINGS = {
    "clips": "train clips",
    "test_clips": "test clips",
    "val_clips": "validation clips",
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
    "textures": "generated picture backgrounds in the train, val and test pools",
    "scene": "shared: a scene per clip ties its ambience to its picture backgrounds and light; "
    "independent: every nuisance drawn on its own in each modality",
    "scenes": "scenes per split (shared)",
    "sync_visibility": "the class's image is shown only in seconds in which the class sounds",
    "tint": "strength of a scene's coloured light (0 = white)",
    "brightness": "range of the scenes' light levels, gain on the whole frame",
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


def _pool_use(bench: Benchmark) -> dict[str, dict[str, int]]:
    """Per split: how often sounds and images were drawn, how many distinct ones, from how many.

    Draws are with replacement, so a recording or image comes back once its pool is smaller than
    the draws; these counts say how often that happened."""
    use: dict[str, dict[str, int]] = {}
    for split, pool in bench.pools.items():
        chosen = [p for p in bench.plans if p.split == split]
        sounds = [e.source for p in chosen for e in p.sounds]
        images = [h.source for p in chosen for h in p.images]
        use[split] = {
            "sound_instances": len(sounds),
            "distinct_sounds": len(set(sounds)),
            "sound_pool": sum(map(len, pool.sounds.values())),
            "image_holds": len(images),
            "distinct_images": len(set(images)),
            "image_pool": sum(map(len, pool.images.values())),
        }
    return use


def _leaks(bench: Benchmark) -> dict[str, dict[str, float] | None]:
    """Per split: the nuisance-to-class check of `coincide.benchdata.nuisances.class_leak`."""
    rows = pd.DataFrame(clip_rows(bench.plans, bench.material))
    return {split: class_leak(rows[rows["split"] == split]) for split in bench.pools}


def _scenes(bench: Benchmark) -> dict[str, list[dict]]:
    """Per split, each scene's ambience (refs), texture indices and light."""
    sources = bench.inputs.backgrounds
    return {
        split: [
            {
                "backgrounds": [sources[i].ref for i in scene.backgrounds],
                "textures": list(scene.textures),
                "tint": [round(g, 4) for g in scene.tint],
                "brightness": round(scene.brightness, 4),
            }
            for scene in pool.scenes
        ]
        for split, pool in bench.pools.items()
        if pool.scenes
    }


def _class_counts(plans: list[ClipPlan], classes: list[str]) -> dict[str, dict[str, int]]:
    counts = {split: Counter(p.label for p in plans if p.split == split) for split in SPLITS}
    return {split: {c: counts[split][c] for c in classes} for split in SPLITS}


def summarise(bench: Benchmark, timing: dict[str, float]) -> dict:
    """What bench.json holds: parameters, classes with prior and rank, realised counts, scenes,
    pool use, the nuisance-to-class check, the time it took (`timing`) and the source notices."""
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
        "scenes": _scenes(bench),
        "pool_use": _pool_use(bench),
        "nuisance_class_check": _leaks(bench),
        "timing": timing,
        "sources": inputs.notices,
    }
    return payload


def write_bench_json(path: Path, summary: dict) -> None:
    """bench.json: the `summarise` of a benchmark, machine-readable."""
    path.write_text(json.dumps(summary, indent=2) + "\n")


def write_readme(path: Path, bench: Benchmark, summary: dict) -> None:
    """README.md: how the benchmark was made (`summary` from `summarise`), from what, under
    which licenses, how fast."""
    timing = summary["timing"]
    params, classes, pairing, plans = bench.params, bench.classes, bench.pairing, bench.plans
    prior, rank, inputs, pools = bench.prior, bench.rank, bench.inputs, bench.pools
    counts = _class_counts(plans, classes)
    realised = _realised(plans)
    if params.scene == "shared":
        scene_note = (
            f"Each clip is filmed in one of {params.scenes} scenes of its split, drawn "
            "independently of its class: the scene fixes the ambient recordings heard and the "
            "picture backgrounds seen, and lights the whole picture with its own colour and "
            "level, so sound and picture share a place as in real video."
        )
    else:
        scene_note = (
            "Background recordings and picture backgrounds are drawn on their own in each "
            "modality (scene model `independent`): only the class links sound and picture."
        )
    if params.sync_visibility:
        scene_note += (
            " The class's image is on screen only in the seconds in which the class sounds."
        )
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
        "pictures only (a distractor). Scene, background, level, picture background, pan and "
        "digit colour are drawn from a random stream that never sees the class. See "
        "docs/benchmark.md "
        "in the coincide repository for the reasoning behind each default.",
        "",
        scene_note,
        "",
        "## Files",
        "",
        f"- `train/clip_NNNNN.mp4` ({params.clips}), `val/clip_NNNNN.mp4` ({params.val_clips}) "
        f"and `test/clip_NNNNN.mp4` ({params.test_clips}): {params.seconds} s each, H.264 "
        f"{params.size}x{params.size} yuv420p at {params.fps} fps, AAC mono at "
        f"{params.sample_rate} Hz. File names carry no label.",
        "- `labels.csv`: `path,label`, one row per clip of every split, paths relative to this "
        "folder; `labels_train.csv`, `labels_val.csv` and `labels_test.csv` hold the rows of "
        "one split each: `coincide ingest OUT/train --store STORE --labels "
        "OUT/labels_train.csv`. Choose models on val; keep test for the final figures.",
        "- `clips.csv`: `path,split,label,scene,tint_r,tint_g,tint_b,brightness,texture,"
        "backgrounds,level_db,colour`, one row per clip: its nuisances (scene -1: no scene "
        "model).",
        "- `events.csv`: `clip,onset,offset,class,modality,kind,source`, one row per sound "
        "instance (modality `audio`) and per shown image (modality `image`); `kind` is `target` "
        "or `distractor`; times in seconds; `source` names the recording or image used.",
        "- `bench.json`: the parameters, prior and counts below, machine-readable.",
        "",
        "## Classes and prior",
        "",
        f"p_k proportional to 1 / rank^{params.zipf} over a seeded random ranking of the classes.",
        "",
        "| class | image label | rank | prior | train clips | val clips | test clips |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for k, c in enumerate(classes):
        lines.append(
            f"| {c} | {pairing[c]} | {rank[k]} | {prior[k]:.3f} | {counts['train'][c]} "
            f"| {counts['val'][c]} | {counts['test'][c]} |"
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
        "Nuisances against the class: a logistic regression predicting the class from a clip's "
        "nuisances alone (clips.csv: scene, light, background recordings, picture background, "
        "level, colour), 5-fold cross-validated, against the majority class:",
        "",
    ]
    for split, leak in summary["nuisance_class_check"].items():
        if leak is None:
            lines.append(f"- {split}: too few clips to tell.")
        else:
            lines.append(
                f"- {split}: accuracy {leak['accuracy']:.3f}, chance {leak['chance']:.3f} "
                f"(p = {leak['p_value']:.2f}, {leak['clips']} clips)."
            )
    lines += [
        "",
        f"Made in {timing['seconds']:.1f} s, {timing['seconds_per_clip']:.3f} s per clip with "
        f"{timing['workers']} worker(s).",
    ]
    lines += [
        "",
        "## Sources, splits and licenses",
        "",
        "Train, val and test clips draw from disjoint sources: sounds and images by their "
        "split (FSDD: by speaker, one speaker each for val and test; MNIST: the first 50,000 "
        "train images, the last 10,000, the t10k images; CSVs: their `split` column, or a "
        "stable hash of the file or `group`), background recordings by source recording, "
        "picture backgrounds from separate pools. Sounds and images are drawn with "
        "replacement, so they come back across clips where a pool is smaller than the draws "
        "(distinct / drawn below).",
        "",
        "| split | sounds (distinct / drawn) | images (distinct / drawn) | background recordings "
        "| picture backgrounds | scenes |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    use = summary["pool_use"]
    for split, pool in pools.items():
        u = use[split]
        lines.append(
            f"| {split} | {u['sound_pool']} ({u['distinct_sounds']} / {u['sound_instances']}) "
            f"| {u['image_pool']} ({u['distinct_images']} / {u['image_holds']}) "
            f"| {len(pool.backgrounds)} | {len(pool.textures)} | {len(pool.scenes)} |"
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
