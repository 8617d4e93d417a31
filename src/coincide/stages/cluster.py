"""`coincide cluster`: assign every window of a store to a cluster (paper 3.3).

Two methods, with the same outputs:
- `head` (the paper): the arg-max of the run's p_clust over f(x) for every window. With
  `head_steps` N > 0, p_clust is first trained N more steps with L_clust on the frozen
  embeddings of the store (`coincide.labeling.cluster_head.train_head`), a clustering of its own.
- `kmeans` (the comparison the paper argues against): scikit-learn's MiniBatchKMeans with K
  centres on the frozen embeddings f(x). The embeddings are length-normalised first, so that
  Euclidean k-means groups by cosine similarity, the geometry p_clust's cosine logits use.

Outputs, in `RUN/clusters/<store name>/` for `head`, `.../head-steps-<N>/` for a head trained
longer and `.../kmeans-<K>/` for `kmeans` (the clustering's name: head, head-steps-N, kmeans-K):
    assignment.npy   (n,) int64, the cluster of window i
    confidence.npy   (n,) float32, p(assigned cluster | x) (`coincide.labeling.cluster_head`)
    sizes.csv        cluster,size for every active (non-empty) cluster, largest first
    summary.json     K, active clusters, windows, a size histogram, the method, its source
    sizes.png        sorted cluster sizes (log-log)
    settings.json    the settings that made it (`ClusterSettings`)
The embeddings f(x) of the store are kept in `RUN/clusters/<store name>/embeddings.npy`
(float32 (n, d)), with `embeddings.json` naming the checkpoint they came from; k-means and the
medoid choice of `coincide label` reuse them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from coincide.config.choices import ClusterMethod
from coincide.config.stage import StageSettings
from coincide.errors import UserError
from coincide.labeling.clusters import (
    CONFIDENCE_FILE,
    EMBEDDINGS_FILE,
    SUMMARY_FILE,
    Clustering,
    ClusteringKey,
    load_clustering,
    store_clusters_dir,
    write_clustering,
)
from coincide.models.embed_store import DEFAULT_BATCH_SIZE, cached_embeddings
from coincide.run_folder import CONFIG_FILE
from coincide.store.features import FeatureStore, open_store

# ---------------------------------------------------------------------------------------------
# Computing clusterings

# Rows of unit-norm embeddings k-means predicts per call (bounded memory for big stores).
_PREDICT_ROWS = 65536


def _checkpoint_identity(checkpoint: Path) -> dict[str, Any]:
    """What identifies a checkpoint file's content cheaply: path, size, modification time."""
    stat = checkpoint.stat()
    return {
        "checkpoint": str(checkpoint.resolve()),
        "checkpoint_size": stat.st_size,
        "checkpoint_mtime_ns": stat.st_mtime_ns,
    }


def check_run(run: Path) -> None:
    """UserError unless the run folder exists (cluster, label and finetune read a trained run)."""
    if not Path(run).is_dir():
        raise UserError(f"run folder {run} does not exist; train a run first.")


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
    identity = {**_checkpoint_identity(checkpoint), "windows": len(store)}
    device = device or _device()

    def encoder() -> Any:
        from coincide.train.checkpoint import load_models

        return load_models(checkpoint)["audio"].to(device)

    path = store_clusters_dir(run, store.root) / EMBEDDINGS_FILE
    return cached_embeddings(path, identity, encoder, store, batch_size, device)[0]


def _device() -> Any:
    from coincide.dist import default_device

    return default_device()


@dataclass(frozen=True)
class ClusterSettings(StageSettings):
    """`coincide cluster`: the run, the store whose windows to cluster, and how.

    `method` None (with `k` None) is the run's own clustering (`resolve_method`); `k` is the
    number of k-means centres (the head's K comes from the run); `checkpoint` None is the run's
    best; `head_steps` N > 0 trains p_clust N more steps on the frozen embeddings first.
    """

    command: ClassVar[str] = "cluster"
    run: Path
    store: Path
    method: ClusterMethod | None = None
    k: int | None = None
    checkpoint: Path | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0
    head_steps: int = 0

    @property
    def key(self) -> ClusteringKey:
        """The clustering these settings make (`method` None: the head)."""
        return ClusteringKey(self.method or "head", self.k, self.head_steps)


def cluster_store(settings: ClusterSettings, store: FeatureStore, device: Any = None) -> Clustering:
    """Cluster every window of `store` (the opened `settings.store`) with the run's p_clust
    (`head`, trained `head_steps` more on the frozen embeddings first) or k-means, write the
    outputs (see the module docstring) and the settings, and return the clustering."""
    from coincide.labeling.cluster_head import centroid_assign_confidence, head_assign, train_head
    from coincide.train.checkpoint import load_checkpoint, load_models

    run = settings.run
    seed = settings.seed
    key = settings.key
    method, k, head_steps = key.method, key.k, key.head_steps
    checkpoint = Path(settings.checkpoint) if settings.checkpoint else default_checkpoint(run)
    folder = key.folder(run, store.root)
    provenance: dict[str, Any] = {
        "clustering": key.name,
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
    embeddings = store_embeddings(run, store, checkpoint, settings.batch_size, device)
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
        assert k is not None  # key.folder checked it
        assignment = kmeans_assign(embeddings, k, seed)
        confidence = centroid_assign_confidence(embeddings, assignment, k)
        num_clusters = k
        provenance["seed"] = seed
    summary = write_clustering(folder, assignment, num_clusters, provenance, confidence)
    settings.write(folder)
    return Clustering(folder, key.name, assignment, num_clusters, summary, confidence)


def ensure_clustering(
    settings: ClusterSettings, store: FeatureStore, device: Any = None
) -> Clustering:
    """The clustering `cluster_store` would make, read from disk when it was already made from
    the same checkpoint file and store (so reproducing a table does not redo it)."""
    run = settings.run
    checkpoint = Path(settings.checkpoint) if settings.checkpoint else default_checkpoint(run)
    folder = settings.key.folder(run, store.root)
    if (folder / SUMMARY_FILE).is_file() and (folder / CONFIDENCE_FILE).is_file():
        summary = json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
        same = all(
            summary.get(key) == value for key, value in _checkpoint_identity(checkpoint).items()
        )
        seed_same = summary.get("seed", settings.seed) == settings.seed
        if same and summary.get("windows") == len(store) and seed_same:
            return load_clustering(run, store.root, settings.key)
    return cluster_store(settings, store, device)


METHOD_WORDS = {
    "head": "the run's clustering head p_clust",
    "kmeans": "k-means on the run's frozen embeddings",
}


def _clustering_config(run: Path) -> dict[str, Any]:
    """The `clustering` section of RUN/config.yaml ({} without a readable one)."""
    import yaml

    from coincide.config.tree import read_yaml

    try:
        tree = read_yaml((Path(run) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    section = tree.get("clustering") if isinstance(tree, dict) else None
    return section if isinstance(section, dict) else {}


def run_clustering(run: Path) -> tuple[ClusterMethod, int | None]:
    """The clustering a run's commands use unless told otherwise: its `clustering.method`,
    k-means at the run's `clustering.K` or the head; the head for a run whose config predates
    the key (or that has no config)."""
    section = _clustering_config(run)
    if section.get("method", "head") == "kmeans" and "K" in section:
        return "kmeans", int(section["K"])
    return "head", None


def resolve_method(
    run: Path, method: ClusterMethod | None, k: int | None
) -> tuple[ClusterMethod, int | None]:
    """`(method, k)` from a command's `--method` and `--clusters`: neither given, the run's own
    (`run_clustering`); `--clusters K` alone, k-means; `--method kmeans` alone, at the run's K."""
    if method is None:
        return ("kmeans", k) if k is not None else run_clustering(run)
    if method == "kmeans" and k is None:
        run_k = _clustering_config(run).get("K")
        k = int(run_k) if run_k is not None else None
    return method, k


def run(settings: ClusterSettings) -> Clustering:
    """The `coincide cluster` command: cluster, write, print a one-line summary. Without
    `method` and `k`, the run's own clustering method (`resolve_method`)."""
    run_dir = Path(settings.run)
    method = settings.method
    k = settings.k
    head_steps = settings.head_steps
    check_run(run_dir)
    if method is None and head_steps:
        method = "head"
    defaulted = method is None and k is None
    method, k = resolve_method(run_dir, method, k)
    if method == "head" and k is not None:
        raise UserError(
            "--clusters sets the number of k-means centres; the head's K comes from the run."
        )
    if head_steps < 0 or (head_steps and method != "head"):
        raise UserError("--head-steps N (N >= 0) trains the head longer; it needs --method head.")
    store = open_store(settings.store)
    if len(store) == 0:
        raise UserError(f"feature store {settings.store} holds no windows; ingest media first.")
    clustering = cluster_store(replace(settings, method=method, k=k), store)
    s = clustering.summary
    longer = f", trained {head_steps} more steps on the frozen embeddings" if head_steps else ""
    longer += ", the run's default" if defaulted else ""
    print(
        f"{clustering.name} (method {method}: {METHOD_WORDS[method]}{longer}): {s['windows']} "
        f"windows in {s['active_clusters']} active clusters of K = {s['K']} (largest "
        f"{s['largest_cluster']}, median {s['median_cluster']:g}); wrote {clustering.folder}"
    )
    return clustering
