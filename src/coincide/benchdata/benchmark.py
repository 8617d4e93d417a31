"""The design of a benchmark before any media is written: pools, scenes, class prior, clip plans.

`plan_benchmark` makes every random choice of every clip from the seed, so rendering is a pure
function of the plans; tests inspect the plans directly (splits, nuisances, scenes, prior).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coincide.benchdata.params import BenchParams
from coincide.benchdata.plan import ClipPlan, SplitPools, plan_clip, plan_scenes
from coincide.benchdata.presets import Inputs
from coincide.benchdata.prior import sample_classes, zipf_prior
from coincide.benchdata.render import Material
from coincide.benchdata.sources import SPLIT_IDS, SPLITS, SoundBank
from coincide.benchdata.textures import generated_textures, picture_textures, texture_side
from coincide.errors import UserError

# Random streams of the whole benchmark, beside the per-clip ones of `plan.clip_rngs`.
PRIOR_STREAM, CLASS_STREAM, TEXTURE_STREAM, SCENE_STREAM = 101, 102, 103, 104


@dataclass(eq=False)
class Benchmark:
    """A benchmark's design: its parameters, sources, pools, prior and one plan per clip."""

    params: BenchParams
    inputs: Inputs
    material: Material
    pools: dict[str, SplitPools]  # only the splits that get clips
    classes: list[str]  # sound labels, sorted
    pairing: dict[str, str]  # sound label -> image label
    prior: np.ndarray  # (n_classes,) float64
    rank: np.ndarray  # (n_classes,) int64, 1 = most frequent
    plans: list[ClipPlan]  # train clips, then val clips, then test clips


def plan_benchmark(params: BenchParams, inputs: Inputs) -> Benchmark:
    """Design the benchmark for resolved `params` (clip counts set) from `inputs`."""
    # Banks (decoded lazily, once) and what each split may draw from.
    sounds = SoundBank(inputs.sounds, params.sample_rate)
    backgrounds = SoundBank(inputs.backgrounds, params.sample_rate)
    textures, texture_splits = _textures(inputs, params)
    material = Material(sounds, backgrounds, inputs.images, textures)
    pairing = _pairing(inputs)
    counts = {"train": params.clips, "val": params.val_clips, "test": params.test_clips}
    pools = {
        split: _pools(split, inputs, pairing, texture_splits, params)
        for split in SPLITS
        if counts[split] > 0
    }

    # The skewed class prior, then one plan per clip.
    classes = sorted(pairing)
    prior, rank = zipf_prior(
        len(classes), params.zipf, np.random.default_rng([params.seed, PRIOR_STREAM])
    )
    plans: list[ClipPlan] = []
    for split in SPLITS:
        if split not in pools:
            continue
        class_rng = np.random.default_rng([params.seed, CLASS_STREAM, SPLIT_IDS[split]])
        for index, k in enumerate(sample_classes(prior, counts[split], class_rng)):
            label = classes[k]
            plans.append(
                plan_clip(
                    split, index, label, pairing[label], params, pools[split], sounds, backgrounds
                )
            )
    return Benchmark(params, inputs, material, pools, classes, pairing, prior, rank, plans)


def _textures(inputs: Inputs, params: BenchParams) -> tuple[list[np.ndarray], list[str]]:
    """The picture-background pool and the split of each texture in it."""
    if inputs.image_backgrounds:
        return (
            picture_textures(inputs.image_backgrounds, params.size),
            [source.split for source in inputs.image_backgrounds],
        )
    rng = np.random.default_rng([params.seed, TEXTURE_STREAM])
    n_train, n_val, n_test = params.textures
    # Validation textures come last, so train and test draw the textures they drew before.
    splits = ["train"] * n_train + ["test"] * n_test + ["val"] * n_val
    return generated_textures(len(splits), params.size, rng), splits


def _pairing(inputs: Inputs) -> dict[str, str]:
    """Sound label -> image label for every class; identity when no pairing was given."""
    sound_labels = sorted({source.label for source in inputs.sounds})
    if not sound_labels:
        raise UserError("no sounds were given; list labeled recordings in --sounds")
    if not inputs.pairing:
        return {label: label for label in sound_labels}
    unknown = sorted(set(inputs.pairing) - set(sound_labels))
    if unknown:
        raise UserError(
            f"the pairing names sound label {unknown[0]!r} that no sound has; fix the pairing CSV"
        )
    return dict(inputs.pairing)


def _pools(
    split: str,
    inputs: Inputs,
    pairing: dict[str, str],
    texture_splits: list[str],
    params: BenchParams,
) -> SplitPools:
    """What clips of `split` may draw from; every class must have material in this split."""
    sounds: dict[str, list[int]] = {}
    for index, source in enumerate(inputs.sounds):
        if source.split == split and source.label in pairing:
            sounds.setdefault(source.label, []).append(index)
    images: dict[str, list[int]] = {}
    for index, source in enumerate(inputs.images):
        if source.split == split:
            images.setdefault(source.label, []).append(index)
    # A CSV written for two splits has no validation rows: say how to go without them.
    skip = f" (or pass --{split}-clips 0)" if split != "train" else ""
    for sound_label, image_label in sorted(pairing.items()):
        if sound_label not in sounds:
            raise UserError(
                f"class {sound_label!r} has no {split} sounds; add some or give the CSV a "
                f"split column{skip}"
            )
        if image_label not in images:
            raise UserError(
                f"image label {image_label!r} has no {split} images; add some or give the CSV a "
                f"split column{skip}"
            )
    backgrounds = [i for i, s in enumerate(inputs.backgrounds) if s.split == split]
    if not backgrounds:
        raise UserError(
            f"no background recording is in the {split} split; add some to the background CSV{skip}"
        )
    textures = [i for i, s in enumerate(texture_splits) if s == split]
    if not textures:
        raise UserError(
            f"no picture background is in the {split} split; add some to that CSV{skip}"
        )
    scenes = ()
    if params.scene == "shared":
        # Neighbours in this order sound alike, so that each scene's run is one kind of place.
        alike = sorted(
            backgrounds,
            key=lambda i: (inputs.backgrounds[i].label, inputs.backgrounds[i].group, i),
        )
        rng = np.random.default_rng([params.seed, SCENE_STREAM, SPLIT_IDS[split]])
        scenes = plan_scenes(alike, textures, params, rng)
    return SplitPools(sounds, images, backgrounds, textures, texture_side(params.size), scenes)
