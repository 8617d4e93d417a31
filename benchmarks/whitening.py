"""Does a linear map fitted on the unlabeled training windows lift held-out QbE, for f and for
log-mel alike?

    python benchmarks/whitening.py --bench BENCH RUN [RUN ...]

BENCH is a folder of `benchmarks/learning.py` (`stores/train` and `stores/test` ingested from
`coincide make-bench`). For log-mel's mean frame (64 bins) and each run's f, the training
store's windows fit (no labels) a centring, a removal of the top k principal directions
(k = 1, 2, 4, 8) and a PCA whitening (all directions, or the top 32); each is applied to the
test store's windows, and window QbE (pairs of one media left out) and clip QbE are printed as
one JSON line per representation. The question it answers: is f's gap to a class-aware
embedding a matter of a few dominant directions (the scene, say) that such a map removes, and
does the map help f more than it helps log-mel?
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from coincide.evaluation.qbe import clip_qbe_map, qbe_map
from coincide.models.embed_store import embed_windows
from coincide.models.inference import load_model
from coincide.store.features import FeatureStore, open_store

DROPPED = (1, 2, 4, 8)


def maps(train: np.ndarray, test: np.ndarray) -> dict[str, np.ndarray]:
    """The test embeddings under each map fitted on `train` (n, d)."""
    mean = train.mean(axis=0)
    _, singular, directions = np.linalg.svd(train - mean, full_matrices=False)
    variance = singular**2 / len(train)
    centred = test - mean
    out = {"raw": test, "centred": centred}
    for k in DROPPED:
        top = directions[:k]
        out[f"drop_top_{k}"] = centred - (centred @ top.T) @ top
    floor = 1e-3 * variance[0]
    for name, rank in (("whiten_all", len(variance)), ("whiten_32", 32)):
        out[name] = (centred @ directions[:rank].T) / np.sqrt(variance[:rank] + floor)
    return out


def measure(name: str, train: np.ndarray, test: np.ndarray, store: FeatureStore) -> None:
    index = store.index
    media = index["media_id"].to_numpy(dtype=str)
    labels = [list(names) for names in index["labels"]]
    line: dict[str, object] = {"representation": name}
    for key, embeddings in maps(train, test).items():
        window = qbe_map(embeddings, labels, media=media)
        clip = clip_qbe_map(embeddings, labels, media)
        line[key] = {"window_qbe": round(window, 4), "clip_qbe": round(clip, 4)}
    print(json.dumps(line), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", type=Path, required=True)
    parser.add_argument("runs", type=Path, nargs="*")
    args = parser.parse_args(argv)
    train = open_store(args.bench / "stores" / "train")
    test = open_store(args.bench / "stores" / "test")

    def mean_frame(store: FeatureStore) -> np.ndarray:
        return np.asarray(store.logmel[:]).mean(axis=2)

    measure("logmel", mean_frame(train), mean_frame(test), test)
    for run in args.runs:
        encoder = load_model(run, device="cpu").encoder
        measure(str(run), embed_windows(encoder, train), embed_windows(encoder, test), test)


if __name__ == "__main__":
    main()
