"""`coincide cluster`: assign every window of a store to a cluster (paper 3.3).

Two methods, with the same outputs:
- `head` (the paper): the arg-max of the run's p_clust over f(x) for every window. With
  `head_steps` N > 0, p_clust is first trained N more steps with L_clust on the frozen
  embeddings of the store (`coincide.cluster_head.train_head`), a clustering of its own.
- `kmeans` (the comparison the paper argues against): scikit-learn's MiniBatchKMeans with K
  centres on the frozen embeddings f(x). The embeddings are length-normalised first, so that
  Euclidean k-means groups by cosine similarity, the geometry p_clust's cosine logits use.

Outputs, in `RUN/clusters/<store name>/` for `head`, `.../head-steps-<N>/` for a head trained
longer and `.../kmeans-<K>/` for `kmeans` (the clustering's name: head, head-steps-N, kmeans-K):
    assignment.npy   (n,) int64, the cluster of window i
    confidence.npy   (n,) float32, p(assigned cluster | x) (`coincide.cluster_head`)
    sizes.csv        cluster,size for every active (non-empty) cluster, largest first
    summary.json     K, active clusters, windows, a size histogram, the method, its source
    sizes.png        sorted cluster sizes (log-log)
The embeddings f(x) of the store are kept in `RUN/clusters/<store name>/embeddings.npy`
(float32 (n, d)), with `embeddings.json` naming the checkpoint they came from; k-means and the
medoid choice of `coincide label` reuse them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coincide.choices import CLUSTER_METHODS, ClusterMethod
from coincide.config import CONFIG_FILE
from coincide.embed_store import DEFAULT_BATCH_SIZE, embed_windows
from coincide.errors import UserError
from coincide.store.features import FeatureStore, open_store

Method = ClusterMethod

ASSIGNMENT_FILE = "assignment.npy"
CONFIDENCE_FILE = "confidence.npy"
SIZES_FILE = "sizes.csv"
SUMMARY_FILE = "summary.json"
SIZES_PLOT = "sizes.png"
EMBEDDINGS_FILE = "embeddings.npy"
EMBEDDINGS_META = "embeddings.json"

# Rows of unit-norm embeddings k-means predicts per call (bounded memory for big stores).
_PREDICT_ROWS = 65536


# ---------------------------------------------------------------------------------------------
# Where clusterings live


def store_clusters_dir(run: Path, store_root: Path) -> Path:
    """`RUN/clusters/<store name>/`: the clusterings and embeddings of one store."""
    return Path(run) / "clusters" / Path(store_root).resolve().name


def clustering_dir(
    run: Path, store_root: Path, method: Method = "head", k: int | None = None, head_steps: int = 0
) -> Path:
    """Folder of one clustering of a store: the head's (trained `head_steps` more), or k-means
    with `k` centres."""
    base = store_clusters_dir(run, store_root)
    if method == "head":
        return base / f"head-steps-{head_steps}" if head_steps else base
    if method == "kmeans":
        if k is None:
            raise UserError("k-means needs the number of clusters; pass --clusters K.")
        return base / f"kmeans-{k}"
    raise ValueError(f"clustering method {method!r} is not one of {CLUSTER_METHODS}")


def clustering_name(method: Method, k: int | None, head_steps: int = 0) -> str:
    """Short name of a clustering, as sessions and tables record it: `head`, `head-steps-N`
    or `kmeans-K`."""
    if method == "head":
        return f"head-steps-{head_steps}" if head_steps else "head"
    return f"kmeans-{k}"


def parse_clustering_name(name: str) -> tuple[Method, int | None, int]:
    """`(method, k, head_steps)` of a clustering name; UserError for an unknown one."""
    prefix, _, number = name.rpartition("-")
    if name == "head":
        return "head", None, 0
    if prefix == "head-steps" and number.isdigit():
        return "head", None, int(number)
    if prefix == "kmeans" and number.isdigit():
        return "kmeans", int(number), 0
    raise UserError(f"{name!r} is not a clustering name (head, head-steps-N or kmeans-K).")


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
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def _write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


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
    tmp = folder / f".{SIZES_FILE}.tmp"
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, folder / SIZES_FILE)
    summary = {**summarize(assignment, num_clusters), **provenance}
    _plot_sizes(
        folder / SIZES_PLOT,
        sizes,
        f"{provenance.get('clustering', '')}: {summary['active_clusters']} of K = {num_clusters}",
    )
    _write_json_atomic(folder / SUMMARY_FILE, summary)
    return summary


def load_clustering(
    run: Path, store_root: Path, method: Method = "head", k: int | None = None, head_steps: int = 0
) -> Clustering:
    """Read a clustering written by `coincide cluster`; a missing one is a UserError."""
    folder = clustering_dir(run, store_root, method, k, head_steps)
    summary_path = folder / SUMMARY_FILE
    name = clustering_name(method, k, head_steps)
    if not summary_path.is_file():
        flags = f" --clusters {k}" if method == "kmeans" else ""
        flags += f" --head-steps {head_steps}" if head_steps else ""
        raise UserError(
            f"{Path(store_root).name} has no '{name}' clustering in {run}; run "
            f"`coincide cluster {run} --store {store_root} --method {method}{flags}` first."
        )
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    confidence_path = folder / CONFIDENCE_FILE
    return Clustering(
        folder=folder,
        name=name,
        assignment=np.load(folder / ASSIGNMENT_FILE),
        num_clusters=int(summary["K"]),
        summary=summary,
        confidence=np.load(confidence_path) if confidence_path.is_file() else None,
    )


# ---------------------------------------------------------------------------------------------
# Computing clusterings


def _checkpoint_identity(checkpoint: Path) -> dict[str, Any]:
    """What identifies a checkpoint file's content cheaply: path, size, modification time."""
    stat = checkpoint.stat()
    return {
        "checkpoint": str(checkpoint.resolve()),
        "checkpoint_size": stat.st_size,
        "checkpoint_mtime_ns": stat.st_mtime_ns,
    }


def default_checkpoint(run: Path) -> Path:
    """The run's best held-out checkpoint (`RUN/checkpoints/best.pt`, else `last.pt`), said on
    stderr; UserError when the run has none."""
    from coincide.train.checkpoint import run_checkpoint

    return run_checkpoint(run)


def kmeans_assign(embeddings: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """k-means (scikit-learn MiniBatchKMeans) on length-normalised embeddings.

    Args:
        embeddings: `(n, d)` frozen embeddings (a memmap is fine).
        k: number of centres (at most n).
        seed: seeds the centre initialisation and the mini-batches.

    Returns:
        `(n,)` int64 cluster of each window (nearest centre).
    """
    from sklearn.cluster import MiniBatchKMeans

    n = len(embeddings)
    if not 1 <= k <= n:
        raise UserError(f"k-means with --clusters {k} needs 1 <= K <= {n} (the number of windows).")
    unit = np.asarray(embeddings, dtype=np.float32)
    unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    # Batches of at least a few points per centre keep every centre updated in each step.
    model = MiniBatchKMeans(
        n_clusters=k,
        batch_size=min(n, max(1024, 3 * k)),
        n_init=3,
        random_state=seed,
    )
    model.fit(unit)
    return np.concatenate(
        [model.predict(unit[s : s + _PREDICT_ROWS]) for s in range(0, n, _PREDICT_ROWS)]
    ).astype(np.int64)


def store_embeddings(
    run: Path,
    store: FeatureStore,
    checkpoint: Path,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: Any = None,
) -> np.ndarray:
    """`(n, d)` float32 embeddings f(x) of every window of `store` under `checkpoint`,
    read from `RUN/clusters/<store>/embeddings.npy` when they were made from the same
    checkpoint and store, computed (and kept there) otherwise. Memory-mapped."""
    folder = store_clusters_dir(run, store.root)
    path, meta_path = folder / EMBEDDINGS_FILE, folder / EMBEDDINGS_META
    identity = {**_checkpoint_identity(checkpoint), "windows": len(store)}
    if (
        path.is_file()
        and meta_path.is_file()
        and json.loads(meta_path.read_text(encoding="utf-8")) == identity
    ):
        return np.load(path, mmap_mode="r")
    from coincide.train.checkpoint import load_models

    models = load_models(checkpoint)
    device = device or _device()
    encoder = models["audio"].to(device)
    meta_path.unlink(missing_ok=True)
    embed_windows(encoder, store, batch_size, device, out=path)
    _write_json_atomic(meta_path, identity)
    return np.load(path, mmap_mode="r")


def _device() -> Any:
    from coincide.embed_store import default_device

    return default_device()


def cluster_store(
    run: Path,
    store: FeatureStore,
    method: Method = "head",
    k: int | None = None,
    checkpoint: Path | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: Any = None,
    seed: int = 0,
    head_steps: int = 0,
) -> Clustering:
    """Cluster every window of `store` with the run's p_clust (`head`, trained `head_steps`
    more on the frozen embeddings first) or k-means, write the outputs (see the module
    docstring) and return the clustering."""
    from coincide.cluster_head import centroid_assign_confidence, head_assign, train_head
    from coincide.train.checkpoint import load_checkpoint, load_models

    checkpoint = Path(checkpoint) if checkpoint else default_checkpoint(run)
    folder = clustering_dir(run, store.root, method, k, head_steps)
    name = clustering_name(method, k, head_steps)
    provenance: dict[str, Any] = {
        "clustering": name,
        "method": method,
        "store": str(store.root.resolve()),
        **_checkpoint_identity(checkpoint),
    }
    payload = load_checkpoint(checkpoint)
    if method == "head" and "cluster_head" not in payload["parts"]:
        raise UserError(
            f"{checkpoint} has no cluster head p_clust (its curriculum had no clustering "
            "stage); use --method kmeans --clusters K, or train a joint stage."
        )
    embeddings = store_embeddings(run, store, checkpoint, batch_size, device)
    if method == "head":
        head = load_models(checkpoint)["cluster_head"].to(device or _device())
        if head_steps:
            config = payload["config"]
            gamma, lr = config["clustering"]["gamma"], config["optim"]["lr"]
            train_head(head, embeddings, head_steps, gamma, lr, seed=seed)
            provenance.update(head_steps=head_steps, gamma=gamma, lr=lr, seed=seed)
        assignment, confidence = head_assign(head, embeddings)
        num_clusters = head.num_clusters
    else:
        assert k is not None  # clustering_dir checked it
        assignment = kmeans_assign(embeddings, k, seed)
        confidence = centroid_assign_confidence(embeddings, assignment, k)
        num_clusters = k
        provenance["seed"] = seed
    summary = write_clustering(folder, assignment, num_clusters, provenance, confidence)
    return Clustering(folder, name, assignment, num_clusters, summary, confidence)


def ensure_clustering(
    run: Path,
    store: FeatureStore,
    method: Method = "head",
    k: int | None = None,
    checkpoint: Path | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: Any = None,
    seed: int = 0,
    head_steps: int = 0,
) -> Clustering:
    """The clustering `cluster_store` would make, read from disk when it was already made from
    the same checkpoint file and store (so reproducing a table does not redo it)."""
    checkpoint = Path(checkpoint) if checkpoint else default_checkpoint(run)
    folder = clustering_dir(run, store.root, method, k, head_steps)
    if (folder / SUMMARY_FILE).is_file() and (folder / CONFIDENCE_FILE).is_file():
        summary = json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
        same = all(
            summary.get(key) == value for key, value in _checkpoint_identity(checkpoint).items()
        )
        if same and summary.get("windows") == len(store) and summary.get("seed", seed) == seed:
            return load_clustering(run, store.root, method, k, head_steps)
    return cluster_store(run, store, method, k, checkpoint, batch_size, device, seed, head_steps)


METHOD_WORDS = {
    "head": "the run's clustering head p_clust",
    "kmeans": "k-means on the run's frozen embeddings",
}


def _clustering_config(run: Path) -> dict[str, Any]:
    """The `clustering` section of RUN/config.yaml ({} without a readable one)."""
    import yaml

    try:
        tree = yaml.safe_load((Path(run) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    section = tree.get("clustering") if isinstance(tree, dict) else None
    return section if isinstance(section, dict) else {}


def run_clustering(run: Path) -> tuple[Method, int | None]:
    """The clustering a run's commands use unless told otherwise: its `clustering.method`,
    k-means at the run's `clustering.K` or the head; the head for a run whose config predates
    the key (or that has no config)."""
    section = _clustering_config(run)
    if section.get("method", "head") == "kmeans" and "K" in section:
        return "kmeans", int(section["K"])
    return "head", None


def resolve_method(run: Path, method: Method | None, k: int | None) -> tuple[Method, int | None]:
    """`(method, k)` from a command's `--method` and `--clusters`: neither given, the run's own
    (`run_clustering`); `--clusters K` alone, k-means; `--method kmeans` alone, at the run's K."""
    if method is None:
        return ("kmeans", k) if k is not None else run_clustering(run)
    if method == "kmeans" and k is None:
        run_k = _clustering_config(run).get("K")
        k = int(run_k) if run_k is not None else None
    return method, k


def run(
    run_dir: Path,
    store_path: Path,
    method: Method | None = None,
    k: int | None = None,
    checkpoint: Path | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    head_steps: int = 0,
) -> Clustering:
    """The `coincide cluster` command: cluster, write, print a one-line summary. Without
    `method` and `k`, the run's own clustering method (`resolve_method`)."""
    if not Path(run_dir).is_dir():
        raise UserError(f"run folder {run_dir} does not exist; train a run first.")
    if method is None and head_steps:
        method = "head"
    defaulted = method is None and k is None
    method, k = resolve_method(Path(run_dir), method, k)
    if method == "head" and k is not None:
        raise UserError(
            "--clusters sets the number of k-means centres; the head's K comes from the run."
        )
    if head_steps < 0 or (head_steps and method != "head"):
        raise UserError("--head-steps N (N >= 0) trains the head longer; it needs --method head.")
    store = open_store(store_path)
    if len(store) == 0:
        raise UserError(f"feature store {store_path} holds no windows; ingest media first.")
    clustering = cluster_store(
        run_dir, store, method, k, checkpoint, batch_size, seed=seed, head_steps=head_steps
    )
    s = clustering.summary
    longer = f", trained {head_steps} more steps on the frozen embeddings" if head_steps else ""
    longer += ", the run's default" if defaulted else ""
    print(
        f"{clustering.name} (method {method}: {METHOD_WORDS[method]}{longer}): {s['windows']} "
        f"windows in {s['active_clusters']} active clusters of K = {s['K']} (largest "
        f"{s['largest_cluster']}, median {s['median_cluster']:g}); wrote {clustering.folder}"
    )
    return clustering
