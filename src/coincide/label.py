"""`coincide label`: cluster-based active learning (paper 3.3) and the random-labeling baseline.

"If the clusters are sufficiently pure, we can simply request a label for a single,
randomly-selected cluster constituent and propagate that label to the cluster cohabitants."

A labeling session lives in the label store (SQLite by default, `RUN/labels.sqlite`):
1. Selection (`coincide.label_select`): for a budget of N, the first N clusters of a fixed,
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

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from coincide.choices import ClusterMethod, ClusterOrder, LabelStrategy, MemberChoice
from coincide.cluster import (
    Clustering,
    ClusterMembers,
    clustering_name,
    load_clustering,
    resolve_method,
    run_clustering,
    store_clusters_dir,
)
from coincide.errors import UserError
from coincide.label_oracle import WindowLabelOracle, answer_with_oracle, oracle_window_labels
from coincide.label_select import (
    is_check,
    random_window_requests,
    select_requests,
)
from coincide.label_signal import estimate as estimate_signal
from coincide.metrics import labels_to_matrix, propagated_label_quality
from coincide.store.features import FeatureStore, open_store
from coincide.store.labels import Answer, LabelStore, Request, Session, label_store_path
from coincide.store.labels_sqlite import SQLiteLabelStore

Strategy = LabelStrategy
Order = ClusterOrder
STRATEGIES: tuple[str, ...] = ("cluster", "random")
# Answer kinds that say what a window holds (labels, or nothing): a check answered so overrides.
KNOWN = ("label", "skip")
PROPAGATED_FILE = "propagated.parquet"
SUMMARY_FILE = "summary.json"


# ---------------------------------------------------------------------------------------------
# Sessions


def assignment_fingerprint(assignment: np.ndarray) -> str:
    """A short hash of a cluster assignment: a session is tied to the clustering it asked."""
    data = np.ascontiguousarray(np.asarray(assignment, dtype=np.int64))
    return hashlib.sha256(data.tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class SessionPlan:
    """How a session chooses its requests; stored in the session, checked when extending."""

    strategy: Strategy
    seed: int
    windows: int
    clustering: str | None = None
    order: Order = "random"
    member: MemberChoice = "random"
    fingerprint: str | None = None
    check_every: int = 0

    def params(self) -> dict[str, Any]:
        """The plan as the session's JSON parameters (the strategy and seed have columns)."""
        if self.strategy == "random":
            return {"windows": self.windows}
        params = {
            "windows": self.windows,
            "clustering": self.clustering,
            "order": self.order,
            "member": self.member,
            "assignment": self.fingerprint,
        }
        # Only when there are checks: sessions made before checks existed keep their params.
        return {**params, "check_every": self.check_every} if self.check_every else params


def cluster_plan(
    clustering: Clustering,
    order: Order = "random",
    member: MemberChoice = "random",
    seed: int = 0,
    check_every: int = 0,
) -> SessionPlan:
    """The plan of a cluster-labeling session over `clustering`."""
    return SessionPlan(
        strategy="cluster",
        seed=seed,
        windows=len(clustering.assignment),
        clustering=clustering.name,
        order=order,
        member=member,
        fingerprint=assignment_fingerprint(clustering.assignment),
        check_every=check_every,
    )


def open_session(
    label_store: LabelStore, name: str, run: Path, store: FeatureStore, plan: SessionPlan
) -> Session:
    """The session called `name`, created with `plan` when new; an existing session must have
    been made with the same plan (else a larger budget would not extend the same list)."""
    existing = label_store.get_session(name)
    if existing is None:
        label_store.create_session(
            name, str(run), str(store.root.resolve()), plan.strategy, plan.seed, plan.params()
        )
        created = label_store.get_session(name)
        assert created is not None
        return created
    wanted = {"strategy": plan.strategy, "seed": plan.seed, **plan.params()}
    have = {"strategy": existing.strategy, "seed": existing.seed, **existing.params}
    differ = sorted(key for key in wanted.keys() | have.keys() if wanted.get(key) != have.get(key))
    if differ:
        key = differ[0]
        reason = (
            "the clustering changed since the session began"
            if key == "assignment"
            else f"it has {key} = {have.get(key)!r}, not {wanted.get(key)!r}"
        )
        raise UserError(
            f"labeling session {name!r} cannot be extended: {reason}; "
            "use the same settings or another --session name."
        )
    if existing.store != str(store.root.resolve()):
        raise UserError(
            f"labeling session {name!r} labels the store {existing.store}, not {store.root}; "
            "use that store or another --session name."
        )
    return existing


def extend_session(
    label_store: LabelStore,
    session: Session,
    budget: int,
    clustering: Clustering | None = None,
    embeddings: np.ndarray | None = None,
    members: ClusterMembers | None = None,
) -> list[Request]:
    """Make sure the session holds the first `budget` requests of its plan (adding only the
    missing ones) and return those `budget` requests, in order."""
    params = session.params
    if session.strategy == "random":
        wanted = random_window_requests(int(params["windows"]), budget, session.seed)
    else:
        if clustering is None:
            raise ValueError("a cluster-labeling session needs its clustering")
        wanted = select_requests(
            clustering.assignment,
            clustering.num_clusters,
            budget,
            params["order"],
            params["member"],
            session.seed,
            embeddings,
            members,
            clustering.confidence,
            int(params.get("check_every", 0)),
        )
    label_store.add_requests(session.id, wanted)
    return label_store.requests(session.id)[: len(wanted)]


# ---------------------------------------------------------------------------------------------
# Propagation


def propagate_answers(
    answers: Iterable[Answer], members: ClusterMembers | None, kinds: Sequence[str] = ("label",)
) -> pd.DataFrame:
    """Give each answered cluster's labels to every window of the cluster.

    Args:
        answers: the answers to propagate (of kinds other than `kinds` give nothing; by
            default only confident `label` answers do, not `unsure` or `mixed` ones).
        members: the clusters' windows; None for a random-labeling session, where each
            answer labels its own window only.

    Returns:
        DataFrame with one row per labeled window, sorted by window: `window_index` (int64),
        `labels` (list of str), `cluster_id` (int64, the answered request).
    """
    answers = list(answers)
    # A check's answer (labels or none) is about its window: the cluster's label yields there.
    checked = {a.window_index for a in answers if is_check(a.cluster_id) and a.kind in KNOWN}
    window_parts: list[np.ndarray] = []
    label_parts: list[list[str]] = []
    cluster_parts: list[int] = []
    for answer in answers:
        if answer.kind not in kinds or not answer.labels:
            continue
        if members is None or is_check(answer.cluster_id):
            windows = np.array([answer.window_index], dtype=np.int64)
        else:
            windows = members.members(answer.cluster_id)
            windows = windows[~np.isin(windows, list(checked))] if checked else windows
        window_parts.append(windows)
        label_parts.extend([list(answer.labels)] * len(windows))
        cluster_parts.extend([answer.cluster_id] * len(windows))
    if not window_parts:
        return pd.DataFrame(
            {
                "window_index": pd.Series([], dtype=np.int64),
                "labels": pd.Series([], dtype=object),
                "cluster_id": pd.Series([], dtype=np.int64),
            }
        )
    frame = pd.DataFrame(
        {
            "window_index": np.concatenate(window_parts),
            "labels": label_parts,
            "cluster_id": np.asarray(cluster_parts, dtype=np.int64),
        }
    )
    return frame.sort_values("window_index", kind="stable").reset_index(drop=True)


def session_labels(
    label_store: LabelStore,
    session: Session,
    budget: int | None = None,
    members: ClusterMembers | None = None,
) -> pd.DataFrame:
    """The propagated labels of the session's first `budget` requests (all when None); see
    `propagate_answers` for the columns. A cluster session needs `members`."""
    requests = label_store.requests(session.id)
    asked = {r.cluster_id for r in (requests if budget is None else requests[:budget])}
    answers = [a for a in label_store.answers(session.id) if a.cluster_id in asked]
    if session.strategy != "random" and members is None:
        raise ValueError("propagating a cluster session needs the cluster members")
    return propagate_answers(answers, None if session.strategy == "random" else members)


def answers_fingerprint(label_store: LabelStore, session: Session, budget: int) -> str:
    """A digest of the answers that propagate to the session's first `budget` requests
    (every answer of them, undone ones included): it changes with any new, re-given or undone
    answer. summary.json keeps it, so finetune can tell stale propagated labels."""
    asked = {r.cluster_id for r in label_store.requests(session.id)[:budget]}
    rows = [
        [a.id, a.cluster_id, a.window_index, list(a.labels), a.kind, a.undone]
        for a in label_store.answers(session.id)
        if a.cluster_id in asked
    ]
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()[:16]


def check_propagated_current(run_dir: Path, name: str, summary: dict[str, Any]) -> None:
    """Refuse propagated labels that no longer match the session's answers in the label store
    (a labeling page stopped before it wrote them, answers given or undone since)."""
    db = label_store_path(run_dir, summary.get("label_store"))
    budget = int(summary.get("requests") or 0)
    again = f"--session {name} --budget {budget}` to propagate them again (it asks nothing new)"
    if "answers_fingerprint" not in summary or not db.is_file():
        raise UserError(
            f"cannot check the propagated labels of session {name!r} against its answers "
            f"(no fingerprint, or no label store {db}); run `coincide label {run_dir} --store "
            f"STORE {again}."
        )
    with SQLiteLabelStore(db) as label_store:
        session = label_store.get_session(name)
        current = answers_fingerprint(label_store, session, budget) if session else None
    if current != summary["answers_fingerprint"]:
        store = session.store if session else "STORE"
        raise UserError(
            f"the answers of session {name!r} in {db} changed after its labels were propagated "
            f"(a labeling page stopped before writing them?); run `coincide label {run_dir} "
            f"--store {store} {again}."
        )


def label_quality(
    propagated: pd.DataFrame, window_labels: Sequence[Sequence[str]]
) -> tuple[float, float]:
    """Precision and recall of propagated labels against each window's true labels (Table 2),
    over (window, class) cells; see `coincide.metrics.propagated_label_quality`.

    Args:
        propagated: as `propagate_answers` returns; window_labels: `n` true label lists.
    """
    classes = sorted(
        {c for labels in window_labels for c in labels}
        | {c for labels in propagated["labels"] for c in labels}
    )
    truth, _ = labels_to_matrix(window_labels, classes)
    given = np.zeros_like(truth)
    if len(propagated):
        given_rows, _ = labels_to_matrix(list(propagated["labels"]), classes)
        given[propagated["window_index"].to_numpy()] = given_rows
    return propagated_label_quality(truth, given)


def write_propagated(folder: Path, propagated: pd.DataFrame, summary: dict[str, Any]) -> Path:
    """Write propagated.parquet and summary.json into `folder` (atomic renames)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PROPAGATED_FILE
    tmp = folder / f".{PROPAGATED_FILE}.tmp"
    propagated.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    tmp_summary = folder / f".{SUMMARY_FILE}.tmp"
    tmp_summary.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp_summary, folder / SUMMARY_FILE)
    return path


def read_propagated(run: Path, session: str) -> pd.DataFrame:
    """`RUN/labels/<session>/propagated.parquet`; a missing one is a UserError."""
    path = labels_dir(run, session) / PROPAGATED_FILE
    if not path.is_file():
        raise UserError(
            f"no labels for session {session!r} in {run}; run `coincide label {run} --store STORE "
            f"--budget N --session {session}` first."
        )
    frame = pd.read_parquet(path)
    frame["labels"] = [list(labels) for labels in frame["labels"]]
    return frame


def labels_dir(run: Path, session: str) -> Path:
    """`RUN/labels/<session>/`."""
    return Path(run) / "labels" / session


def default_session_name(
    strategy: Strategy, clustering: str = "head", run_default: str = "head"
) -> str:
    """`random`; `cluster` for cluster labeling of the run's default clustering (`run_default`,
    see `cluster.run_clustering`), which finetune reads by default; `cluster-<clustering>` for
    another one (e.g. `cluster-head` in a run that clusters with k-means by default)."""
    if strategy == "random":
        return "random"
    return "cluster" if clustering == run_default else f"cluster-{clustering}"


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


def run(
    run_dir: Path,
    store_path: Path,
    budget: int,
    oracle: str | None = None,
    strategy: Strategy = "cluster",
    select: Order = "random",
    member: MemberChoice = "random",
    session_name: str | None = None,
    db: Path | None = None,
    seed: int = 0,
    method: ClusterMethod | None = None,
    k: int | None = None,
    serve: bool = False,
    host: str = "127.0.0.1",
    port: int = 8750,
    vocab: Path | None = None,
    annotator: str | None = None,
    head_steps: int = 0,
    check_every: int = 0,
) -> dict[str, Any]:
    """The `coincide label` command: select, ask the oracle, propagate, write. Returns the
    summary written next to the propagated labels. With `serve`, people answer the selected
    clusters in the labeling page (`coincide.labelui.server.serve`, until Ctrl+C) before the
    labels are propagated. `check_every` N asks a check after every N clusters; the estimate of
    label precision and coverage (`coincide.label_signal`) is printed and kept in the summary."""
    if not Path(run_dir).is_dir():
        raise UserError(f"run folder {run_dir} does not exist; train a run first.")
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
        clustering = load_clustering(run_dir, store.root, method, k, head_steps)
        if len(clustering.assignment) != len(store):
            raise UserError(
                f"the clustering in {clustering.folder} covers {len(clustering.assignment)} "
                f"windows but the store has {len(store)}; run `coincide cluster` again."
            )
        members = ClusterMembers(clustering.assignment)
        plan = cluster_plan(clustering, select, member, seed, check_every)
        if member == "medoid":
            embeddings = _load_embeddings(run_dir, store)
        run_default = clustering_name(*run_clustering(Path(run_dir)))
        name = session_name or default_session_name("cluster", clustering.name, run_default)
    else:
        plan = SessionPlan(strategy="random", seed=seed, windows=len(store))
        name = session_name or default_session_name("random")

    # The session name becomes a folder name under RUN/labels/.
    if Path(name).name != name or name in (".", ".."):
        raise UserError(f"--session {name!r} must be a plain name (no '/'); choose another.")

    # Requests and answers, committed one by one in the label store.
    db_path = label_store_path(run_dir, db or None)
    window_labels = oracle_window_labels(store, oracle) if oracle else None
    with SQLiteLabelStore(db_path) as label_store:
        session = open_session(label_store, name, run_dir, store, plan)
        requests = extend_session(label_store, session, budget, clustering, embeddings, members)
        asked = 0
        if window_labels is not None:
            asked = answer_with_oracle(
                label_store, session, requests, WindowLabelOracle(window_labels)
            )
        if serve:
            from coincide.labelui.server import serve as serve_page

            serve_page(
                run_dir,
                store_path,
                len(requests),
                host,
                port,
                vocab,
                name,
                db_path,
                annotator=annotator,
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
