"""What a trained f knows, measured on a benchmark's test store (media no gradient saw):

    python benchmarks/probe.py --bench BENCH --data-dir DATA RUN [RUN ...] [--logmel]

BENCH is a folder of `benchmarks/learning.py` (`OUT/bench/avmnist-300-shared-s11`: `media/`
from `coincide make-bench`, `stores/test` ingested from it). For each run folder it prints one
JSON line: window QbE (pairs of one media left out), clip QbE, clip QbE on the raw FSDD test
recordings (takes 0-4, as learning.py measures it) with log-mel's and chance's, and two linear
probes of the test windows' embeddings (logistic regression, 5-fold cross-validation grouped
by media): `p_class` predicts the digit, `p_scene` the clip's scene from make-bench's
`clips.csv` (the nuisance shared by sound and picture). `--logmel` adds a line for the mean
log-mel frame of each window. The table "Levers against the scene shortcut" in
benchmarks/README.md was measured with it, one `coincide train` per row.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from coincide.evaluation.qbe import clip_qbe_map, qbe_map
from coincide.models.embed_store import embed_windows
from coincide.models.inference import load_model
from coincide.store.features import FeatureStore, open_store
from learning import fsdd_test_recordings, raw_baselines, recording_windows, run_raw_qbe


def linear_probe(features: np.ndarray, target: np.ndarray, media: np.ndarray) -> float:
    """Accuracy of a logistic regression on held-out media (5 folds grouped by media)."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return float(cross_val_score(model, features, target, groups=media, cv=GroupKFold(5)).mean())


def measure(bench: Path, embed: Callable[[FeatureStore], np.ndarray]) -> dict[str, float]:
    """Window and clip QbE and both probes of one representation on BENCH's test store."""
    store = open_store(bench / "stores" / "test")
    index = store.index
    media = index["media_id"].to_numpy(dtype=str)
    labels = [list(names) for names in index["labels"]]
    embeddings = embed(store)
    scenes = pd.read_csv(bench / "media" / "clips.csv").set_index("path")["scene"]
    clip_rows = index["media_path"].astype(str).map(lambda p: "test/" + Path(p).name)
    return {
        "window_qbe": qbe_map(embeddings, labels, media=media),
        "clip_qbe": clip_qbe_map(embeddings, labels, media),
        "p_class": linear_probe(embeddings, np.array([names[0] for names in labels]), media),
        "p_scene": linear_probe(embeddings, scenes.loc[clip_rows].to_numpy(), media),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--logmel", action="store_true")
    parser.add_argument("runs", type=Path, nargs="*")
    args = parser.parse_args(argv)

    paths, digits = fsdd_test_recordings(args.data_dir)
    windows = recording_windows(paths)
    print(json.dumps({"raw_fsdd": raw_baselines(windows, digits)}), flush=True)
    if args.logmel:

        def mean_frame(store: FeatureStore) -> np.ndarray:
            return np.asarray(store.logmel[:]).mean(axis=2)

        print(json.dumps({"run": "logmel", **measure(args.bench, mean_frame)}), flush=True)
    for run in args.runs:
        model = load_model(run, device="cpu")
        line = measure(args.bench, lambda store, m=model: embed_windows(m.encoder, store))
        line["raw_qbe"] = run_raw_qbe(run, windows, digits)
        print(json.dumps({"run": str(run), **{k: round(v, 4) for k, v in line.items()}}))


if __name__ == "__main__":
    main()
