"""Rebuild the bundled demo data (`coincide/demo_data`) from the full datasets.

    python -m coincide.benchdata.demo_subset ../shared/data src/coincide/demo_data

Kept in the package so the subset is reproducible and its choice documented in code: every FSDD
speaker, takes 5-9 (train) and 0-2 (test) of every digit, stored as lossless FLAC; the first 30
train and 10 test MNIST images of each digit as PNG; six ambient ESC-10 clips (CC BY 3.0), four
source recordings for train and two others for test.
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile
from PIL import Image

from coincide.benchdata.presets import read_idx

FSDD_TAKES = {"train": range(5, 10), "test": range(0, 3)}
MNIST_PER_DIGIT = {"train": 30, "test": 10}
# ESC-10 ambient clips, one per source recording; train and test never share a recording.
ESC10_CLIPS = {
    "train": (
        "audio/4-160999-A-10.flac",  # rain
        "audio/4-161127-A-10.flac",  # rain
        "audio/4-167063-A-11.flac",  # sea_waves
        "audio/4-170247-A-12.flac",  # crackling_fire
    ),
    "test": (
        "audio/4-182613-A-11.flac",  # sea_waves
        "audio/4-164661-A-12.flac",  # crackling_fire
    ),
}


def build(data_dir: Path, out: Path) -> None:
    """Write the subset (audio, images, the three CSVs) into `out`; notices are kept as they are."""
    _write_fsdd(data_dir / "fsdd", out)
    _write_mnist(data_dir / "mnist", out)
    _write_esc10(data_dir / "esc50_subset", out)


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _write_fsdd(source: Path, out: Path) -> None:
    table = pd.read_csv(source / "metadata.csv")
    (out / "fsdd").mkdir(parents=True, exist_ok=True)
    rows = []
    for split, takes in FSDD_TAKES.items():
        chosen = table[table["take"].isin(list(takes)) & (table["split"] == split)]
        for row in chosen.sort_values("filename").to_dict("records"):
            samples, rate = soundfile.read(source / row["filename"], dtype="int16")
            name = Path(row["filename"]).with_suffix(".flac").name
            soundfile.write(out / "fsdd" / name, samples, rate, subtype="PCM_16")
            rows.append(
                [f"fsdd/{name}", str(row["label"]), split, f"{row['speaker']}_{row['take']}"]
            )
    _write_csv(out / "sounds.csv", ["path", "label", "split", "group"], rows)


def _write_mnist(source: Path, out: Path) -> None:
    rows = []
    for split, stem in (("train", "train"), ("test", "t10k")):
        images = read_idx(source / f"{stem}-images-idx3-ubyte.gz")
        labels = read_idx(source / f"{stem}-labels-idx1-ubyte.gz")
        (out / "mnist" / split).mkdir(parents=True, exist_ok=True)
        for digit in range(10):
            for index in np.flatnonzero(labels == digit)[: MNIST_PER_DIGIT[split]]:
                name = f"mnist/{split}/{digit}_{index:05d}.png"
                Image.fromarray(images[index]).save(out / name, optimize=True)
                rows.append([name, str(digit), split])
    _write_csv(out / "images.csv", ["path", "label", "split"], rows)


def _write_esc10(source: Path, out: Path) -> None:
    table = pd.read_csv(source / "metadata.csv", dtype=str).set_index("filename")
    (out / "esc10").mkdir(parents=True, exist_ok=True)
    rows = []
    for split, names in ESC10_CLIPS.items():
        for name in names:
            meta = table.loc[name]
            if meta["esc10"] != "True":
                raise ValueError(f"{name} is not an ESC-10 (CC BY 3.0) clip; pick another")
            shutil.copyfile(source / name, out / "esc10" / Path(name).name)
            rows.append(
                [
                    f"esc10/{Path(name).name}",
                    split,
                    meta["src_file"],
                    meta["label"],
                    meta["freesound_attribution"],
                ]
            )
    _write_csv(out / "backgrounds.csv", ["path", "split", "group", "label", "attribution"], rows)


if __name__ == "__main__":
    build(Path(sys.argv[1]), Path(sys.argv[2]))
