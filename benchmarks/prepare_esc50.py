"""Ingest the ESC-50 subset as an audio-only benchmark: train/test split by source recording.

ESC-50 clips cut from one Freesound recording share its `src_file`; splitting clip by clip
would put near-identical audio on both sides, so whole source recordings go to one split
(seeded, about `--test-fraction` of the recordings of each class to test).

    python benchmarks/prepare_esc50.py --data-dir ../shared/data --out stores/esc50
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def split_by_source(meta: pd.DataFrame, test_fraction: float, seed: int) -> pd.Series:
    """Return 'train'/'test' per clip, whole `src_file` groups on one side, stratified by class."""
    rng = np.random.default_rng(seed)
    split = pd.Series("train", index=meta.index)
    for _, group in meta.groupby("target"):
        sources = sorted(group["src_file"].unique())
        rng.shuffle(sources)
        n_test = max(1, round(len(sources) * test_fraction)) if len(sources) > 1 else 0
        split[group.index[group["src_file"].isin(sources[:n_test])]] = "test"
    return split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, required=True, help="Folder for the two stores.")
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    folder = args.data_dir / "esc50_subset"
    meta = pd.read_csv(folder / "metadata.csv")
    meta["split"] = split_by_source(meta, args.test_fraction, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("train", "test"):
        part = meta[meta["split"] == name]
        paths = [str((folder / f).resolve()) for f in part["filename"]]
        labels_csv = args.out / f"labels_{name}.csv"
        pd.DataFrame({"path": paths, "label": part["label"].to_numpy()}).to_csv(
            labels_csv, index=False
        )
        command = [
            sys.executable,
            "-m",
            "coincide.cli",
            "ingest",
            *paths,
            "--store",
            str(args.out / name),
            "--labels",
            str(labels_csv),
            "--workers",
            str(args.workers),
        ]
        print(f"{name}: {len(part)} clips from {part['src_file'].nunique()} source recordings")
        subprocess.run(command, check=True)
    overlap = set(meta.loc[meta.split == "train", "src_file"]) & set(
        meta.loc[meta.split == "test", "src_file"]
    )
    if overlap:
        sys.exit(f"source recordings on both sides: {sorted(overlap)[:5]}")


if __name__ == "__main__":
    main()
