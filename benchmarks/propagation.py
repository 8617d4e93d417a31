"""How far should one answer reach? Label precision and a frozen-f classifier for answers
propagated to the whole cluster (the paper), to the part of it nearest the asked window, or
not at all, against the same number of random windows.

    python benchmarks/propagation.py RUN [RUN ...] --store TRAIN --test-store TEST \
        [--budget 5,10,20] [--seed 0,1,2,3,4] [--spread 0.05,0.25]

For each run the clustering is the one `coincide reproduce table3` uses (the run's own,
computed once and kept in the run folder), and the label draws are Table 3's: the same
`select_requests` (random cluster order, a random member) and `random_window_requests`, seed
for seed; the store's labels answer. Rows, at each budget N:

- `random windows`: N windows drawn uniformly, each labeled (Table 3's random labels);
- `asked only`: the N windows shown for N clusters, each labeled, nothing propagated;
- `nearest P`: each answer also given to the fraction P of its cluster nearest (cosine, on f)
  to the asked window;
- `whole cluster`: each answer given to every window of its cluster (the paper, Table 3's
  cluster labeling);
- `whole cluster, weighted`: the same windows, weighted in the fit: the asked window 1 and
  the rest of its cluster 1 together, so that an answer's propagated labels weigh as much as
  the answer itself, not hundreds of times more.

Each row reports the labeled windows, the share of them whose label is right, and the clip
mAP on the test store of a logistic regression (scikit-learn) fitted on f's frozen,
L2-normalised embeddings of the labeled windows (clip score: the mean of its windows'
probabilities). That classifier is a cheap stand-in for Table 3's fine-tuning: seconds per
row, so that a question about propagation costs no training. Mean ± sd over the seeds;
`vs random` is the ratio of the means. Prints a Markdown table; `--out FILE.csv` keeps every
draw.
"""

from __future__ import annotations

import argparse
import csv
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from coincide.evaluation.metrics import clip_scores, mean_average_precision
from coincide.labeling.clusters import ClusterMembers
from coincide.labeling.oracle import oracle_window_labels
from coincide.labeling.select import random_window_requests, select_requests
from coincide.models.search_index import unit_rows
from coincide.stages.cluster import (
    ClusterSettings,
    default_checkpoint,
    ensure_clustering,
    run_clustering,
    store_embeddings,
)
from coincide.store.features import FeatureStore, open_store


def first_labels(store: FeatureStore) -> np.ndarray:
    """The first label of every window ('' where it has none), as Table 3's annotator sees it."""
    return np.array([names[0] if names else "" for names in oracle_window_labels(store, "store")])


def unit(rows: np.ndarray) -> np.ndarray:
    """Rows of length 1 (`search_index.unit_rows`), in float64 for the fit."""
    return unit_rows(rows).astype(np.float64)


class Scorer:
    """Clip mAP on the test store of a logistic regression fitted on labeled windows of f."""

    def __init__(self, test: np.ndarray, test_labels: np.ndarray, test_media: np.ndarray):
        self.test = test
        self.media = test_media
        self.classes = np.unique(test_labels[test_labels != ""])
        _, clip_label_rows = clip_scores(
            (test_labels[:, None] == self.classes[None, :]).astype(float), test_media
        )
        self.truth = clip_label_rows > 0

    def __call__(
        self, train: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
    ) -> float:
        present = np.unique(labels)
        if len(present) < 2:  # one class: nothing to tell apart, every clip scores the same
            probabilities = np.zeros((len(self.test), len(self.classes)))
            probabilities[:, np.searchsorted(self.classes, present)] = 1.0
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model = LogisticRegression(C=10.0, max_iter=2000)
                model.fit(train, labels, sample_weight=weights)
            probabilities = np.zeros((len(self.test), len(self.classes)))
            columns = np.searchsorted(self.classes, model.classes_)
            probabilities[:, columns] = model.predict_proba(self.test)
        _, scores = clip_scores(probabilities, self.media)
        return mean_average_precision(self.truth, scores)


def propagated(
    requests: Sequence[tuple[int, int]],
    members: ClusterMembers,
    embeddings: np.ndarray,
    spread: float | None,
) -> list[np.ndarray]:
    """The windows each answer labels: the asked one (spread 0), the nearest `spread` of its
    cluster to it, or the whole cluster (spread None)."""
    reached = []
    for cluster, shown in requests:
        windows = members.members(cluster)
        if spread is None:
            reached.append(windows)
        elif spread == 0:
            reached.append(np.array([shown]))
        else:
            closeness = embeddings[windows] @ embeddings[shown]
            keep = max(1, round(spread * len(windows)))
            reached.append(windows[np.argsort(-closeness, kind="stable")[:keep]])
    return reached


def record(
    run: Path,
    name: str,
    budget: int,
    seed: int,
    reached: list[np.ndarray],
    shown: list[int],
    truth: np.ndarray,
    embeddings: np.ndarray,
    scorer: Scorer,
    weighted: bool = False,
) -> dict[str, object]:
    """One row of one draw: `reached[i]` are the windows labeled by the answer for `shown[i]`."""
    windows = np.concatenate(reached)
    given = np.concatenate([np.full(len(r), truth[s]) for r, s in zip(reached, shown, strict=True)])
    weights = None
    if weighted:  # the asked window 1, the rest of its cluster 1 together
        weights = np.concatenate(
            [
                np.where(r == s, 1.0, 1.0 / max(1, len(r) - 1))
                for r, s in zip(reached, shown, strict=True)
            ]
        )
    return {
        "run": str(run),
        "row": name,
        "budget": budget,
        "seed": seed,
        "windows": len(windows),
        "precision": float(np.mean(given == truth[windows])),
        "clip_map": scorer(embeddings[windows], given, weights),
    }


def measure_run(
    run: Path,
    train: FeatureStore,
    test: FeatureStore,
    budgets: Sequence[int],
    seeds: Sequence[int],
    spreads: Sequence[float],
) -> list[dict[str, object]]:
    checkpoint = default_checkpoint(run)
    method, k = run_clustering(run)
    clustering = ensure_clustering(
        ClusterSettings(run, train.root, method, k, checkpoint, seed=seeds[0]), train
    )
    embeddings = unit(store_embeddings(run, train, checkpoint))
    scorer = Scorer(
        unit(store_embeddings(run, test, checkpoint)),
        first_labels(test),
        test.index["media_id"].to_numpy(dtype=str),
    )
    truth = first_labels(train)
    members = ClusterMembers(clustering.assignment)
    rows_of: list[tuple[str, float | None]] = [("asked only", 0.0)]
    rows_of += [(f"nearest {p:g}", p) for p in spreads] + [("whole cluster", None)]
    out: list[dict[str, object]] = []
    for budget in budgets:
        for seed in seeds:
            draws = {
                "random windows": [
                    np.array([w]) for w, _ in random_window_requests(len(train), budget, seed)
                ]
            }
            requests = select_requests(
                clustering.assignment, clustering.num_clusters, budget, seed=seed, members=members
            )
            for name, spread in rows_of:
                draws[name] = propagated(requests, members, embeddings, spread)
            asked = [shown for _, shown in requests]
            for name, reached in draws.items():
                shown = [int(r[0]) for r in reached] if name == "random windows" else asked
                out.append(
                    record(run, name, budget, seed, reached, shown, truth, embeddings, scorer)
                )
            whole = draws["whole cluster"]
            out.append(
                record(
                    run,
                    "whole cluster, weighted",
                    budget,
                    seed,
                    whole,
                    asked,
                    truth,
                    embeddings,
                    scorer,
                    weighted=True,
                )
            )
            print(f"{run.name}: budget {budget} seed {seed} done", flush=True)
    return out


def table(records: list[dict[str, object]], runs: Sequence[Path]) -> str:
    lines = [
        "| run | labels | row | labeled windows | precision | clip mAP | vs random |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for run in runs:
        mine = [r for r in records if r["run"] == str(run)]
        budgets = sorted({int(r["budget"]) for r in mine})
        rows = list(dict.fromkeys(str(r["row"]) for r in mine))
        for budget in budgets:
            at = [r for r in mine if r["budget"] == budget]
            base = np.mean([r["clip_map"] for r in at if r["row"] == "random windows"])
            for row in rows:
                picked = [r for r in at if r["row"] == row]
                maps = np.array([r["clip_map"] for r in picked], dtype=float)
                windows = np.mean([r["windows"] for r in picked])
                precision = np.mean([r["precision"] for r in picked])
                lines.append(
                    f"| {run.name} | {budget} | {row} | {windows:.0f} | {precision:.2f} | "
                    f"{maps.mean():.3f} ± {maps.std(ddof=1) if len(maps) > 1 else 0:.3f} | "
                    f"{maps.mean() / base:.2f}x |"
                )
    return "\n".join(lines)


def integers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--store", type=Path, required=True, help="labeled training store")
    parser.add_argument("--test-store", type=Path, required=True, help="labeled test store")
    parser.add_argument("--budget", type=integers, default=[5, 10, 20])
    parser.add_argument("--seed", type=integers, default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--spread", type=lambda t: [float(p) for p in t.split(",")], default=[0.05, 0.25]
    )
    parser.add_argument("--out", type=Path, help="CSV of every draw")
    args = parser.parse_args(argv)
    if any(not 0 < p < 1 for p in args.spread):
        parser.error("--spread takes fractions between 0 and 1, e.g. 0.05,0.25")
    train, test = open_store(args.store), open_store(args.test_store)
    records: list[dict[str, object]] = []
    for run in args.runs:
        records += measure_run(run, train, test, args.budget, args.seed, args.spread)
    if args.out:
        with args.out.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    print(table(records, args.runs))


if __name__ == "__main__":
    main()
