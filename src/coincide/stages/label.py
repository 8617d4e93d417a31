"""`coincide label`: cluster-based active learning (paper 3.3) and the random-labeling baseline.

"If the clusters are sufficiently pure, we can simply request a label for a single,
randomly-selected cluster constituent and propagate that label to the cluster cohabitants."

A labeling session lives in the label store (SQLite by default, `RUN/labels.sqlite`):
1. Selection (`coincide.labeling.select`): for a budget of N, the first N clusters of a fixed,
   seeded order of the active clusters (uniformly random, the paper; or by size, or size x
   uncertainty), each shown through one member (random, the paper; or the medoid, or the most
   typical), optionally with check requests. The list depends only on the seed and the
   clustering, so a larger budget extends it: `extend_session` adds only the new requests, and
   earlier answers are kept.
2. Answers (`answer_with_oracle`): the simulated annotator of the paper answers each pending
   request with the clip-level labels of the shown window's clip (or `skip` when that clip has
   none), committed one by one as annotator `oracle`. People answer the same requests through
   the web page (a later command), writing through the same store.
3. Propagation (`propagate_answers`): each cluster answered with labels gives them to every one
   of its windows; a check answer (labels or skip) is about its own window and wins over the
   cluster's label there; `RUN/labels/<session>/propagated.parquet` holds (window_index,
   labels, cluster_id) for the first N requests.

Random baseline (`--strategy random`): N windows drawn uniformly at random, each labeled alone,
no propagation. In the label store each is a request whose "cluster" is the window itself
(cluster_id = window index), so people and the oracle answer both strategies the same way.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from coincide.config.choices import ClusterMethod, ClusterOrder, LabelStrategy, MemberChoice
from coincide.config.stage import StageSettings
from coincide.errors import UserError
from coincide.labeling.clusters import (
    Clustering,
    ClusteringKey,
    ClusterMembers,
    load_clustering,
    store_clusters_dir,
)
from coincide.labeling.oracle import WindowLabelOracle, answer_with_oracle, oracle_window_labels
from coincide.labeling.sessions import (
    PROPAGATED_FILE,
    SessionPlan,
    answers_fingerprint,
    cluster_plan,
    default_session_name,
    extend_session,
    label_quality,
    labels_dir,
    open_session,
    session_labels,
    write_propagated,
)
from coincide.labeling.signal import estimate as estimate_signal
from coincide.stages.cluster import check_run, resolve_method, run_clustering
from coincide.store.features import FeatureStore, open_store
from coincide.store.labels import label_store_path
from coincide.store.labels_sqlite import SQLiteLabelStore

STRATEGIES: tuple[str, ...] = ("cluster", "random")
# ---------------------------------------------------------------------------------------------
# The command


def _load_embeddings(run: Path, store: FeatureStore) -> np.ndarray:
    path = store_clusters_dir(run, store.root) / "embeddings.npy"
    if not path.is_file():
        raise UserError(
            f"the medoid member needs the embeddings of {store.root} in {path}; "
            f"run `coincide cluster {run} --store {store.root}` first."
        )
    return np.load(path, mmap_mode="r")


@dataclass(frozen=True)
class LabelSettings(StageSettings):
    """`coincide label`: which run and store, how many labels, and how they are asked.

    `oracle` None leaves the requests to people (`serve` opens the labeling page at `host`:
    `port` until Ctrl+C); `session` None is the default name of the strategy (and clustering);
    `db` None is RUN/labels.sqlite; `method`, `k` and `head_steps` pick the clustering as in
    `ClusterSettings`; `check_every` N asks a check after every N clusters.
    """

    command: ClassVar[str] = "label"
    run: Path
    store: Path
    budget: int
    oracle: str | None = None
    strategy: LabelStrategy = "cluster"
    select: ClusterOrder = "random"
    member: MemberChoice = "random"
    session: str | None = None
    db: Path | None = None
    seed: int = 0
    method: ClusterMethod | None = None
    k: int | None = None
    serve: bool = False
    host: str = "127.0.0.1"
    port: int = 8750
    vocab: Path | None = None
    annotator: str | None = None
    head_steps: int = 0
    check_every: int = 0


def run(settings: LabelSettings) -> dict[str, Any]:
    """The `coincide label` command: select, ask the oracle, propagate, write. Returns the
    summary written next to the propagated labels (with the settings, in settings.json). With
    `serve`, people answer the selected clusters in the labeling page
    (`coincide.labelui.server.serve`, until Ctrl+C) before the labels are propagated. The
    estimate of label precision and coverage (`coincide.labeling.signal`) is printed and kept
    in the summary."""
    run_dir = settings.run
    store_path = settings.store
    budget = settings.budget
    strategy = settings.strategy
    seed = settings.seed
    method = settings.method
    k = settings.k
    head_steps = settings.head_steps
    session_name = settings.session
    check_run(run_dir)
    if budget < 1:
        raise UserError(f"--budget is {budget}; give a positive number of labels.")
    store = open_store(store_path)
    if len(store) == 0:
        raise UserError(f"feature store {store_path} holds no windows; ingest media first.")

    # Selection plan (and the clustering it selects from).
    clustering: Clustering | None = None
    members: ClusterMembers | None = None
    embeddings: np.ndarray | None = None
    if strategy == "cluster":
        if method is None and head_steps:
            method = "head"
        method, k = resolve_method(Path(run_dir), method, k)
        clustering = load_clustering(run_dir, store.root, ClusteringKey(method, k, head_steps))
        if len(clustering.assignment) != len(store):
            raise UserError(
                f"the clustering in {clustering.folder} covers {len(clustering.assignment)} "
                f"windows but the store has {len(store)}; run `coincide cluster` again."
            )
        members = ClusterMembers(clustering.assignment)
        plan = cluster_plan(
            clustering, settings.select, settings.member, seed, settings.check_every
        )
        if settings.member == "medoid":
            embeddings = _load_embeddings(run_dir, store)
        run_default = ClusteringKey(*run_clustering(Path(run_dir))).name
        name = session_name or default_session_name("cluster", clustering.name, run_default)
    else:
        plan = SessionPlan(strategy="random", seed=seed, windows=len(store))
        name = session_name or default_session_name("random")

    # The session name becomes a folder name under RUN/labels/.
    if Path(name).name != name or name in (".", ".."):
        raise UserError(f"--session {name!r} must be a plain name (no '/'); choose another.")

    # Requests and answers, committed one by one in the label store.
    db_path = label_store_path(run_dir, settings.db or None)
    window_labels = oracle_window_labels(store, settings.oracle) if settings.oracle else None
    with SQLiteLabelStore(db_path) as label_store:
        session = open_session(label_store, name, run_dir, store, plan)
        requests = extend_session(label_store, session, budget, clustering, embeddings, members)
        asked = 0
        if window_labels is not None:
            asked = answer_with_oracle(
                label_store, session, requests, WindowLabelOracle(window_labels)
            )
        if settings.serve:
            from coincide.labelui.server import LabelingServer, serve

            serve(
                LabelingServer(
                    run_dir,
                    store_path,
                    len(requests),
                    settings.host,
                    settings.port,
                    settings.vocab,
                    name,
                    db_path,
                    annotator=settings.annotator,
                )
            )
        requests = label_store.requests(session.id)[: len(requests)]
        propagated = session_labels(label_store, session, len(requests), members)
        fingerprint = answers_fingerprint(label_store, session, len(requests))
        asked_clusters = {r.cluster_id for r in requests}
        current = label_store.answers(session.id)
        kinds = Counter(a.kind for a in current if a.cluster_id in asked_clusters)
        signal = (
            estimate_signal(requests, current, members, len(store)) if members is not None else None
        )

    # Propagated labels and a summary.
    summary: dict[str, Any] = {
        "session": name,
        "strategy": strategy,
        "seed": seed,
        "clustering": clustering.name if clustering else None,
        "budget": budget,
        "requests": len(requests),
        "answered": sum(r.state == "answered" for r in requests),
        "asked_now": asked,
        "answers_by_kind": dict(kinds),
        "labeled_windows": len(propagated),
        "classes": sorted({c for labels in propagated["labels"] for c in labels}),
        "label_store": str(db_path.resolve()),
        "answers_fingerprint": fingerprint,
        "signal": signal.as_dict() if signal is not None else None,
    }
    if window_labels is not None and any(window_labels):
        precision, recall = label_quality(propagated, window_labels)
        # NaN precision (nothing propagated) is written as null: JSON has no NaN.
        summary["label_precision"] = None if np.isnan(precision) else precision
        summary["label_recall"] = recall
    out = labels_dir(run_dir, name)
    write_propagated(out, propagated, summary)
    settings.write(out)

    capped = f" (only {len(requests)} active clusters)" if len(requests) < budget else ""
    pending = summary["requests"] - summary["answered"]
    of = f" (clustering {clustering.name})" if clustering is not None else ""
    print(
        f"session {name!r}{of}: {summary['answered']} of {len(requests)} requests answered"
        f"{capped}, "
        f"{asked} asked now; {len(propagated)} windows labeled"
        + (f"; {pending} requests wait for an annotator" if pending else "")
        + (
            f"; label precision {summary['label_precision']:.3f}, "
            f"recall {summary['label_recall']:.3f}"
            if summary.get("label_precision") is not None
            else ""
        )
        + f"; wrote {out / PROPAGATED_FILE}"
    )
    if signal is not None:
        print(f"session {name!r}: {signal.describe()}")
    return summary
