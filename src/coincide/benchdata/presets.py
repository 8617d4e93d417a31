"""Where a benchmark's sources come from: user CSVs, the `avmnist` preset, or the bundled demo.

`avmnist` reads the full datasets from a data folder: spoken digits (FSDD, split by speaker),
handwritten digits (MNIST IDX files: the last 10,000 train images for validation, t10k for test)
and the ambient classes of the ESC-50 subset as backgrounds (split by source recording). `demo`
reads the small subset of the same three datasets that ships inside the package
(`coincide/demo_data`) and splits it by the same rules, so it needs nothing else. Explicit CSV
options replace the matching part of a preset.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field, replace
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd

from coincide.benchdata.sources import (
    Source,
    read_background_csv,
    read_labeled_csv,
    read_pairing_csv,
)
from coincide.config.choices import BENCH_PRESETS
from coincide.errors import UserError

# Default (train, val, test) clip counts: the demo stays small enough to ingest and train on 2
# cores in a few minutes; avmnist is a real benchmark (about 4.3 hours of video).
PRESET_CLIPS = {"demo": (60, 12, 20), "avmnist": (1000, 200, 333)}
# MNIST train images from this index on validate (the usual 50,000 / 10,000 cut); t10k tests.
MNIST_VAL_FROM = 50_000
# The bundled subset holds the first MNIST train images of each digit: the last few validate.
DEMO_VAL_IMAGES = 6
# Of the bundled ESC-10 clips, this source recording (rain, the second of two) validates: the
# subset has six recordings, too few for a quarter each; train keeps rain, sea waves and fire.
DEMO_VAL_BACKGROUNDS = ("161127",)
# ESC-50 classes that sound like a scene rather than an event: what a background should be.
AMBIENT_CLASSES = (
    "rain",
    "sea_waves",
    "crackling_fire",
    "crickets",
    "wind",
    "water_drops",
    "chirping_birds",
    "insects",
    "thunderstorm",
    "pouring_water",
)

FSDD_NOTICE = (
    "Free Spoken Digit Dataset (FSDD), Zohar Jackson and contributors, "
    "github.com/Jakobovski/free-spoken-digit-dataset; CC BY-SA 4.0"
)
MNIST_NOTICE = (
    "MNIST handwritten digits, Y. LeCun, C. Cortes, C. J. C. Burges; CC BY-SA 3.0 "
    "(as commonly distributed)"
)
ESC_NOTICE = (
    "ESC-50, K. J. Piczak, ESC: Dataset for Environmental Sound Classification, ACM Multimedia "
    "2015; CC BY-NC 3.0, ESC-10 clips CC BY 3.0; per-clip Freesound attribution below"
)


@dataclass(frozen=True)
class SourceArgs:
    """The source options of `coincide make-bench` as given on the command line."""

    preset: str | None = None
    data_dir: Path | None = None
    sounds: Path | None = None
    images: Path | None = None
    backgrounds: Path | None = None
    image_backgrounds: Path | None = None
    pairing: Path | None = None


@dataclass(eq=False)
class Inputs:
    """Resolved sources. Empty `image_backgrounds` means generated textures; empty `pairing`
    means each sound label is shown as the image label of the same name."""

    sounds: list[Source]
    images: list[Source]
    backgrounds: list[Source]
    image_backgrounds: list[Source] = field(default_factory=list)
    pairing: dict[str, str] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)  # one line per source dataset


def demo_data_dir() -> Path:
    """The folder of the bundled demo data inside the installed package."""
    folder = Path(str(files("coincide").joinpath("demo_data")))
    if not (folder / "sounds.csv").is_file():
        raise UserError(
            f"the bundled demo data is missing from {folder}; reinstall coincide from its source"
        )
    return folder


def resolve_inputs(args: SourceArgs) -> Inputs:
    """Read every source the options name; CSV options override the preset's choice."""
    if args.preset is None:
        if args.sounds is None or args.images is None:
            raise UserError(
                "make-bench needs --sounds and --images CSVs, or a --preset (demo or avmnist)"
            )
        # Without a background CSV, the bundled ambient recordings are the pool: a benchmark
        # always has real backgrounds shared across clips.
        demo = _demo_inputs()
        inputs = Inputs(sounds=[], images=[], backgrounds=demo.backgrounds)
        inputs.notices = [line for line in demo.notices if line.startswith("ESC")]
    elif args.preset == "demo":
        inputs = _demo_inputs()
    elif args.preset == "avmnist":
        inputs = _avmnist_inputs(args.data_dir)
    else:
        raise ValueError(f"preset {args.preset!r} is not one of {BENCH_PRESETS}")

    if args.sounds is not None:
        inputs.sounds = read_labeled_csv(args.sounds, "sound")
        inputs.notices.append(f"sounds listed in {args.sounds}")
    if args.images is not None:
        inputs.images = read_labeled_csv(args.images, "image")
        inputs.notices.append(f"images listed in {args.images}")
    if args.backgrounds is not None:
        inputs.backgrounds = read_background_csv(args.backgrounds, "background")
        inputs.notices = [n for n in inputs.notices if not n.startswith("ESC")]
        inputs.notices.append(f"background recordings listed in {args.backgrounds}")
    if args.image_backgrounds is not None:
        inputs.image_backgrounds = read_background_csv(args.image_backgrounds, "image background")
        inputs.notices.append(f"picture backgrounds listed in {args.image_backgrounds}")
    if args.pairing is not None:
        inputs.pairing = read_pairing_csv(args.pairing)
    return inputs


def _demo_inputs() -> Inputs:
    """The bundled subset, re-split three ways by the rules of the full data: FSDD by speaker
    (its CSV splits by take), MNIST's last `DEMO_VAL_IMAGES` train images of each digit and the
    `DEMO_VAL_BACKGROUNDS` recording to validation."""
    folder = demo_data_dir()
    sounds = read_labeled_csv(folder / "sounds.csv", "sound")
    # The group is speaker_take.
    speaker_split = speaker_splits({s.group.rsplit("_", 1)[0] for s in sounds})
    sounds = [replace(s, split=speaker_split[s.group.rsplit("_", 1)[0]]) for s in sounds]
    images = read_labeled_csv(folder / "images.csv", "image")
    val_images: set[str] = set()
    for label in {s.label for s in images}:
        train = sorted(s.ref for s in images if s.label == label and s.split == "train")
        val_images.update(train[-DEMO_VAL_IMAGES:])
    images = [replace(s, split="val") if s.ref in val_images else s for s in images]
    backgrounds = [
        replace(s, split="val") if s.group in DEMO_VAL_BACKGROUNDS else s
        for s in read_background_csv(folder / "backgrounds.csv", "background")
    ]
    return Inputs(
        sounds=sounds,
        images=images,
        backgrounds=backgrounds,
        notices=[
            f"{FSDD_NOTICE} (bundled subset, coincide/demo_data/fsdd)",
            f"{MNIST_NOTICE} (bundled subset, coincide/demo_data/mnist)",
            f"{ESC_NOTICE} (bundled ESC-10 clips, coincide/demo_data/esc10)",
        ],
    )


def _avmnist_inputs(data_dir: Path | None) -> Inputs:
    if data_dir is None:
        raise UserError(
            "--preset avmnist needs --data-dir, the folder holding fsdd/, mnist/, esc50_subset/"
        )
    for name in (
        "fsdd/metadata.csv",
        "mnist/train-images-idx3-ubyte.gz",
        "esc50_subset/metadata.csv",
    ):
        if not (data_dir / name).is_file():
            raise UserError(
                f"{data_dir / name} does not exist; point --data-dir at the data folder"
            )
    return Inputs(
        sounds=fsdd_sources(data_dir / "fsdd"),
        images=mnist_sources(data_dir / "mnist"),
        backgrounds=esc50_backgrounds(data_dir / "esc50_subset"),
        notices=[FSDD_NOTICE, MNIST_NOTICE, ESC_NOTICE],
    )


def speaker_splits(speakers: set[str]) -> dict[str, str]:
    """Speaker -> split: ordered by a stable hash of the name, the first speaker is test, the
    second validation, the rest train (FSDD's six: 1 / 1 / 4), so no voice crosses splits."""
    if len(speakers) < 3:
        raise UserError(
            f"a split by speaker needs at least 3 speakers, found {len(speakers)}; "
            "give the sounds CSV a split column instead"
        )
    order = sorted(speakers, key=lambda s: (zlib.crc32(s.encode()), s))
    return {s: "test" if k == 0 else "val" if k == 1 else "train" for k, s in enumerate(order)}


def fsdd_sources(folder: Path) -> list[Source]:
    """FSDD recordings split by speaker (`speaker_splits`), not by the official split of its
    metadata.csv (takes 0-4 test), which hears every speaker in train and test alike."""
    table = pd.read_csv(folder / "metadata.csv", dtype=str)
    split_of_speaker = speaker_splits(set(table["speaker"]))
    return [
        Source(
            label=row["label"],
            split=split_of_speaker[row["speaker"]],
            ref=f"fsdd/{row['filename']}",
            group=f"{row['speaker']}_{row['take']}",
            path=folder / row["filename"],
        )
        for row in table.to_dict("records")
    ]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip-compressed): images (n, rows, cols) uint8 or labels (n,) uint8."""
    with gzip.open(path) as handle:
        payload = handle.read()
    magic = int.from_bytes(payload[:4], "big")
    if magic == 2051:
        count, rows, cols = (int.from_bytes(payload[4 * k : 4 * k + 4], "big") for k in (1, 2, 3))
        return np.frombuffer(payload, np.uint8, offset=16).reshape(count, rows, cols)
    if magic == 2049:
        return np.frombuffer(payload, np.uint8, offset=8)
    raise UserError(f"{path} is not an IDX image or label file; use the MNIST .gz files")


def mnist_sources(folder: Path) -> list[Source]:
    """MNIST images held in memory: train images up to `MNIST_VAL_FROM` are the train split, the
    rest of them validation, t10k the test split. Refs name the IDX file and index."""
    sources = []
    for stem in ("train", "t10k"):
        images = read_idx(folder / f"{stem}-images-idx3-ubyte.gz")
        labels = read_idx(folder / f"{stem}-labels-idx1-ubyte.gz")
        file_split = "train" if stem == "train" else "test"
        for index, label in enumerate(labels):
            split = "val" if stem == "train" and index >= MNIST_VAL_FROM else file_split
            sources.append(
                Source(
                    label=str(int(label)),
                    split=split,
                    ref=f"mnist:{file_split}:{index}",
                    group=f"mnist:{file_split}:{index}",
                    pixels=images[index],
                )
            )
    return sources


def esc50_backgrounds(folder: Path, classes: tuple[str, ...] = AMBIENT_CLASSES) -> list[Source]:
    """The ambient clips of an ESC-50 folder, split by source recording (`src_file`).

    Within each class, source recordings are ordered by a stable hash: the first quarter (rounded
    down) goes to test, the next quarter to validation, so a held-out background recording is
    never heard in training clips (a class with fewer than 4 recordings stays in train).
    """
    table = pd.read_csv(folder / "metadata.csv", dtype=str)
    table = table[table["label"].isin(classes)]
    split_of_file: dict[str, str] = {}
    for _, group in table.groupby("label"):
        recordings = sorted(set(group["src_file"]), key=lambda s: (zlib.crc32(s.encode()), s))
        quarter = len(recordings) // 4
        for k, recording in enumerate(recordings):
            split_of_file[recording] = (
                "test" if k < quarter else "val" if k < 2 * quarter else "train"
            )
    return [
        Source(
            label=row["label"],
            split=split_of_file[row["src_file"]],
            ref=f"esc50/{row['filename']}",
            group=row["src_file"],
            path=folder / row["filename"],
            attribution=row.get("freesound_attribution", ""),
        )
        for row in table.to_dict("records")
    ]
