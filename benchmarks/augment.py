"""Loader cost of training-batch augmentation: pairs/s with it off and on, same run, same batches.

    .venv/bin/python benchmarks/augment.py [--config laptop|FILE] [--set k=v ...]
        [--batch-size B] [--batches N] [--rounds R] [--media N] [--step]

What is measured: the work of one loader worker, in this process with one torch thread (what
`data.workers = 0` runs inside the training step, and what each worker process does with
workers > 0): `PairBatches` over the joint stage's pairs (anchor x1, AA partner x2, AV frame v2)
of a synthetic store in the shapes `coincide ingest` writes (benchmarks/train_throughput.py's
store: 64 mel x 96 frames, 128 x 128 x 3 frames), read from its memory maps and, when on,
augmented by `coincide.data.augment.BatchAugment` with the configuration's `augment` section
(default `--config laptop`, where it is on). Besides "off" and "on", each switch of the
section is timed alone, to show where the cost is.

Clock: CPU seconds of this thread (time.thread_time), which other jobs on a shared machine
change little; the variants alternate batch by batch over R rounds of N batches (each round
reads other batches, every variant the same ones), and the rate is total pairs / total seconds.

`--step` also times the configuration's joint training step (f, g, heads, losses, Adam; one
thread, the batches above) in the same run, and prints how much augmenting in the training
process (`data.workers = 0`) adds to it.

Prints the ratio on / off; no bar. Exits 2 on a usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from coincide.config.settings import Config, load_config
from coincide.data.augment import (
    AudioAugmentConfig,
    AugmentConfig,
    BatchAugment,
    ImageAugmentConfig,
)
from coincide.data.batches import PairBatches, read_batch
from coincide.data.pairs import PairSampler, WindowTable, split_media
from coincide.dist import Precision
from coincide.errors import UserError
from coincide.store.features import FeatureStore, open_store
from coincide.train.checkpoint import build_models
from coincide.train.objective import stage_parts
from train_throughput import (
    WINDOWS_PER_MEDIA,
    JointStep,
    _repeat,
    default_media,
    find_stage,
    write_synthetic_store,
)

# Switches timed alone: name -> the keys of its config section that make it up.
SWITCH_KEYS = {
    "audio.time_shift": ("audio", ("time_shift",)),
    "audio.mix": ("audio", ("mix_prob", "mix_snr_db")),
    "audio.gain_db": ("audio", ("gain_db",)),
    "audio.freq_masks": ("audio", ("freq_masks", "freq_mask_width")),
    "audio.time_masks": ("audio", ("time_masks", "time_mask_width")),
    "image.rotate_deg": ("image", ("rotate_deg",)),
    "image.crop_scale": ("image", ("crop_scale",)),
    "image.jitter": ("image", ("jitter",)),
    "image.hflip": ("image", ("hflip",)),
}


def variants(cfg: AugmentConfig) -> dict[str, AugmentConfig | None]:
    """ "off", "on" (the whole section) and each switch of it that is on, alone."""
    out: dict[str, AugmentConfig | None] = {"off": None, "on": cfg}
    for name, (part, keys) in SWITCH_KEYS.items():
        section = getattr(cfg, part)
        alone = {key: getattr(section, key) for key in keys}
        empty = AudioAugmentConfig() if part == "audio" else ImageAugmentConfig()
        switch = dataclasses.replace(empty, **alone)
        if switch.enabled:
            out[name] = dataclasses.replace(AugmentConfig(), **{part: switch})
    return out


def measure(
    cfg: Config, store: FeatureStore, batches: int, rounds: int
) -> tuple[dict[str, float], PairSampler]:
    """Seconds per variant (summed over rounds x batches) and the sampler that drew the pairs."""
    table = WindowTable(store.index)
    train_media, _ = split_media(table, cfg.eval.val_fraction, cfg.seed)
    sampler = PairSampler(
        table,
        ("aa", "av"),
        cfg.data.delta_t,
        cfg.data.batch_size,
        cfg.data.weighting,
        cfg.seed,
        0,
        train_media,
    )
    augmenters = {
        name: None if section is None else BatchAugment(section, store, table, train_media, 0)
        for name, section in variants(cfg.augment).items()
    }
    seconds = dict.fromkeys(augmenters, 0.0)
    for augment in augmenters.values():  # warm-up: maps opened, torchvision's first calls
        next(iter(PairBatches(store, sampler, 0, augment)))
    for r in range(rounds):
        start = 1 + r * batches
        iterators = {
            name: iter(PairBatches(store, sampler, start, augment))
            for name, augment in augmenters.items()
        }
        for _ in range(batches):
            for name, iterator in iterators.items():
                started = time.thread_time()
                next(iterator)
                seconds[name] += time.thread_time() - started
    return seconds, sampler


def time_step(cfg: Config, store: FeatureStore, sampler: PairSampler, steps: int) -> float:
    """CPU seconds per joint step on unaugmented batches read beforehand (one thread)."""
    stage = find_stage(cfg, "joint")
    torch.manual_seed(cfg.seed)
    models = build_models(cfg, stage_parts(stage))
    step = JointStep(
        cfg,
        stage,
        models,
        Precision.for_training(cfg.optim.amp, cfg.optim.channels_last, torch.device("cpu")),
    )
    ready = [read_batch(store, sampler.batch(n)) for n in range(steps)]
    step.take(_repeat(ready[0]), 2)
    started = time.thread_time()
    step.take(iter(ready), steps)
    return (time.thread_time() - started) / steps


def show(
    seconds: dict[str, float], pairs: int, batch_size: int, console: Console
) -> dict[str, float]:
    rates = {name: pairs / s for name, s in seconds.items()}
    table = Table(title=f"loader, one thread, B = {batch_size}: {pairs} pairs per variant")
    for column in ("variant", "pairs/s", "ms / batch", "added ms / batch", "rate / off"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    batches = pairs / batch_size
    for name, rate in rates.items():
        added = (seconds[name] - seconds["off"]) / batches * 1e3
        table.add_row(
            name,
            f"{rate:,.0f}",
            f"{seconds[name] / batches * 1e3:.1f}",
            "" if name == "off" else f"{added:+.1f}",
            f"{rate / rates['off']:.3f}",
        )
    console.print(table)
    return rates


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="laptop", help="Preset or YAML file (its augment).")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="key.sub=value override."
    )
    parser.add_argument("--batch-size", type=int, default=None, help="Sets data.batch_size.")
    parser.add_argument("--batches", type=int, default=20, help="Batches per variant per round.")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds (other batches each).")
    parser.add_argument("--media", type=int, default=None, help="Media in the synthetic store.")
    parser.add_argument("--step", action="store_true", help="Also time the joint step.")
    parser.add_argument("--step-count", type=int, default=5, help="Timed steps with --step.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    console = Console()
    try:
        args = parse_args(argv)
        torch.set_num_threads(1)
        overrides = [*args.overrides, "device=cpu"]
        if args.batch_size is not None:
            overrides.append(f"data.batch_size={args.batch_size}")
        cfg = load_config([args.config], overrides)
        if not cfg.augment.enabled:
            raise UserError(f"--config {args.config} has augmentation off; use laptop or --set.")
        if args.batches < 1 or args.rounds < 1:
            raise UserError("--batches and --rounds must be at least 1.")
        media = args.media or default_media(cfg.data.batch_size, cfg.eval.val_fraction)
        with tempfile.TemporaryDirectory(prefix="coincide-augment-bench-") as tmp:
            console.print(f"synthetic store: {media} media x {WINDOWS_PER_MEDIA} windows")
            store = open_store(write_synthetic_store(Path(tmp) / "store", media, cfg.seed))
            seconds, sampler = measure(cfg, store, args.batches, args.rounds)
            pairs = cfg.data.batch_size * args.batches * args.rounds
            rates = show(seconds, pairs, cfg.data.batch_size, console)
            console.print(
                f"augmentation on / off: {rates['on'] / rates['off']:.3f} of the loader's rate "
                f"({rates['off']:,.0f} -> {rates['on']:,.0f} pairs/s per worker)"
            )
            if args.step:
                step_s = time_step(cfg, store, sampler, args.step_count)
                added = (seconds["on"] - seconds["off"]) / (pairs / cfg.data.batch_size)
                console.print(
                    f"joint step ({cfg.model.audio.arch} f and g, one thread): {step_s:.3f} "
                    f"s/step = {cfg.data.batch_size / step_s:,.1f} pairs/s; augmenting in the "
                    f"training process adds {added:.4f} s/step ({added / step_s:.1%})"
                )
    except UserError as err:
        console.print(f"error: {err}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
