"""Clusterings as files: where a run keeps the clustering of a store, its name, its members and
sizes, written and read (`coincide cluster` computes them: `coincide.stages.cluster`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coincide.config.choices import CLUSTER_METHODS, ClusterMethod
from coincide.errors import UserError
from coincide.files import atomic_path, write_json_atomic, write_text_atomic
from coincide.run_folder import RunFolder

ASSIGNMENT_FILE = "assignment.npy"
CONFIDENCE_FILE = "confidence.npy"
SIZES_FILE = "sizes.csv"
SUMMARY_FILE = "summary.json"
SIZES_PLOT = "sizes.png"
EMBEDDINGS_FILE = "embeddings.npy"


# ---------------------------------------------------------------------------------------------
# Where clusterings live


def store_clusters_dir(run: Path, store_root: Path) -> Path:
    """`RUN/clusters/<store name>/`: the clusterings and embeddings of one store."""
    return RunFolder(run).clusters(store_root)


@dataclass(frozen=True)
class ClusteringKey:
    """Which clustering of a store: the run's head p_clust (trained `head_steps` more on the
    frozen embeddings first), or k-means with `k` centres."""

    method: ClusterMethod = "head"
    k: int | None = None
    head_steps: int = 0

    @classmethod
    def parse(cls, name: str) -> ClusteringKey:
        """The key of a clustering `name`; UserError for an unknown one."""
        prefix, _, number = name.rpartition("-")
        if name == "head":
            return cls("head")
        if prefix == "head-steps" and number.isdigit():
            return cls("head", head_steps=int(number))
        if prefix == "kmeans" and number.isdigit():
            return cls("kmeans", int(number))
        raise UserError(f"{name!r} is not a clustering name (head, head-steps-N or kmeans-K).")

    @property
    def name(self) -> str:
        """Short name of the clustering, as sessions and tables record it and as its folder is
        called: `head`, `head-steps-N` or `kmeans-K`."""
        if self.method == "head":
            return f"head-steps-{self.head_steps}" if self.head_steps else "head"
        return f"kmeans-{self.k}"

    def folder(self, run: Path, store_root: Path) -> Path:
        """Folder of this clustering of a store: `store_clusters_dir` itself for the head,
        its `head-steps-N/` for a head trained longer, its `kmeans-K/` for k-means."""
        if self.method == "kmeans" and self.k is None:
            raise UserError("k-means needs the number of clusters; pass --clusters K.")
        if self.method not in CLUSTER_METHODS:
            raise ValueError(f"clustering method {self.method!r} is not one of {CLUSTER_METHODS}")
        base = store_clusters_dir(run, store_root)
        return base if self.name == "head" else base / self.name


# ---------------------------------------------------------------------------------------------
# Cluster sizes and members


def cluster_sizes(assignment: np.ndarray, num_clusters: int) -> np.ndarray:
    """`(K,)` int64 number of windows in each cluster, from an `(n,)` assignment."""
    return np.bincount(np.asarray(assignment, dtype=np.int64), minlength=num_clusters)


def size_histogram(sizes: np.ndarray) -> dict[str, int]:
    """Active clusters per size bin `1`, `2-3`, `4-7`, ... (powers of two), as a dict."""
    active = np.asarray(sizes)[np.asarray(sizes) > 0]
    if active.size == 0:
        return {}
    octave = np.floor(np.log2(active)).astype(np.int64)
    counts = np.bincount(octave)
    histogram = {}
    for power, count in enumerate(counts):
        low, high = 2**power, 2 ** (power + 1) - 1
        histogram[str(low) if low == high else f"{low}-{high}"] = int(count)
    return histogram


class ClusterMembers:
    """The windows of each cluster, grouped once (a stable sort), so that looking up the
    members of any of up to a million clusters costs O(log n), not a pass over the store."""

    def __init__(self, assignment: np.ndarray) -> None:
        self.assignment = np.asarray(assignment, dtype=np.int64)
        self._order = np.argsort(self.assignment, kind="stable")
        sorted_ids = self.assignment[self._order]
        self.active, starts, counts = np.unique(sorted_ids, return_index=True, return_counts=True)
        self._start = dict(zip(self.active.tolist(), starts.tolist(), strict=True))
        self._count = dict(zip(self.active.tolist(), counts.tolist(), strict=True))

    def size(self, cluster_id: int) -> int:
        """Number of windows in the cluster (0 for an empty one)."""
        return self._count.get(int(cluster_id), 0)

    def members(self, cluster_id: int) -> np.ndarray:
        """`(size,)` int64 window indices of the cluster, ascending."""
        start = self._start.get(int(cluster_id))
        if start is None:
            return np.empty(0, dtype=np.int64)
        return self._order[start : start + self._count[int(cluster_id)]]


# ---------------------------------------------------------------------------------------------
# Loading and writing clusterings


@dataclass(frozen=True)
class Clustering:
    """One clustering of a store: `assignment` `(n,)` int64 into `num_clusters` clusters."""

    folder: Path
    name: str
    assignment: np.ndarray
    num_clusters: int
    summary: dict[str, Any]
    confidence: np.ndarray | None = None  # (n,) p(assigned cluster | x); None: not written

    @property
    def active(self) -> int:
        """Number of non-empty clusters."""
        return int(np.count_nonzero(cluster_sizes(self.assignment, self.num_clusters)))


def summarize(assignment: np.ndarray, num_clusters: int) -> dict[str, Any]:
    """The summary.json numbers of an assignment: K, active clusters, sizes."""
    sizes = cluster_sizes(assignment, num_clusters)
    active = sizes[sizes > 0]
    return {
        "K": int(num_clusters),
        "windows": int(len(assignment)),
        "active_clusters": int(active.size),
        "largest_cluster": int(active.max()) if active.size else 0,
        "median_cluster": float(np.median(active)) if active.size else 0.0,
        "size_histogram": size_histogram(sizes),
    }


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, array)


def _plot_sizes(path: Path, sizes: np.ndarray, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    active = np.sort(sizes[sizes > 0])[::-1]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(np.arange(1, len(active) + 1), active, drawstyle="steps-post")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("cluster rank")
    ax.set_ylabel("windows in cluster")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_clustering(
    folder: Path,
    assignment: np.ndarray,
    num_clusters: int,
    provenance: dict[str, Any],
    confidence: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write assignment.npy, confidence.npy (when given), sizes.csv, summary.json and sizes.png
    into `folder`.

    The summary is written last, so a folder with a summary holds a complete clustering.
    Returns the summary.
    """
    folder.mkdir(parents=True, exist_ok=True)
    assignment = np.asarray(assignment, dtype=np.int64)
    sizes = cluster_sizes(assignment, num_clusters)
    (folder / SUMMARY_FILE).unlink(missing_ok=True)  # the files below change
    _save_npy_atomic(folder / ASSIGNMENT_FILE, assignment)
    (folder / CONFIDENCE_FILE).unlink(missing_ok=True)
    if confidence is not None:
        _save_npy_atomic(folder / CONFIDENCE_FILE, np.asarray(confidence, dtype=np.float32))
    active = np.flatnonzero(sizes)
    by_size = active[np.argsort(-sizes[active], kind="stable")]
    lines = ["cluster,size", *(f"{c},{sizes[c]}" for c in by_size)]
    write_text_atomic(folder / SIZES_FILE, "\n".join(lines) + "\n")
    summary = {**summarize(assignment, num_clusters), **provenance}
    _plot_sizes(
        folder / SIZES_PLOT,
        sizes,
        f"{provenance.get('clustering', '')}: {summary['active_clusters']} of K = {num_clusters}",
    )
    write_json_atomic(folder / SUMMARY_FILE, summary)
    return summary


def load_clustering(run: Path, store_root: Path, key: ClusteringKey) -> Clustering:
    """Read a clustering written by `coincide cluster`; a missing one is a UserError."""
    folder = key.folder(run, store_root)
    summary_path = folder / SUMMARY_FILE
    if not summary_path.is_file():
        flags = f" --clusters {key.k}" if key.method == "kmeans" else ""
        flags += f" --head-steps {key.head_steps}" if key.head_steps else ""
        raise UserError(
            f"{Path(store_root).name} has no '{key.name}' clustering in {run}; run "
            f"`coincide cluster {run} --store {store_root} --method {key.method}{flags}` first."
        )
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    confidence_path = folder / CONFIDENCE_FILE
    return Clustering(
        folder=folder,
        name=key.name,
        assignment=np.load(folder / ASSIGNMENT_FILE),
        num_clusters=int(summary["K"]),
        summary=summary,
        confidence=np.load(confidence_path) if confidence_path.is_file() else None,
    )
