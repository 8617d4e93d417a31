"""Labeling sessions: the plan of questions a session asks, its answers in the label store, and
their propagation to every window of a cluster (paper 3.3); `coincide label` runs them
(`coincide.stages.label`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from coincide.config.choices import ClusterOrder, LabelStrategy, MemberChoice
from coincide.errors import UserError
from coincide.evaluation.metrics import labels_to_matrix, propagated_label_quality
from coincide.files import atomic_path, write_json_atomic
from coincide.labeling.clusters import (
    Clustering,
    ClusterMembers,
)
from coincide.labeling.select import (
    is_check,
    random_window_requests,
    select_requests,
)
from coincide.run_folder import RunFolder
from coincide.store.features import FeatureStore
from coincide.store.labels import Answer, LabelStore, Request, Session, label_store_path
from coincide.store.labels_sqlite import SQLiteLabelStore

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

    strategy: LabelStrategy
    seed: int
    windows: int
    clustering: str | None = None
    order: ClusterOrder = "random"
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
    order: ClusterOrder = "random",
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
    params = plan.params()
    wanted = {"strategy": plan.strategy, "seed": plan.seed, **params}

    def check(existing: Session) -> None:
        have = {"strategy": existing.strategy, "seed": existing.seed, **existing.params}
        differ = sorted(k for k in wanted.keys() | have.keys() if wanted.get(k) != have.get(k))
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

    return session_of_store(label_store, name, run, store, plan.strategy, plan.seed, params, check)


def session_of_store(
    label_store: LabelStore,
    name: str,
    run: Path,
    store: FeatureStore,
    strategy: str,
    seed: int,
    params: dict[str, Any],
    check: Callable[[Session], None],
) -> Session:
    """The session called `name`, created with these settings when new; an existing one must
    pass `check` (which raises UserError when it was made otherwise) and label `store`."""
    root = str(store.root.resolve())
    existing = label_store.get_session(name)
    if existing is None:
        label_store.create_session(name, str(run), root, strategy, seed, params)
        created = label_store.get_session(name)
        assert created is not None
        return created
    check(existing)
    if existing.store != root:
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
    over (window, class) cells; see `coincide.evaluation.metrics.propagated_label_quality`.

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
    path = folder / PROPAGATED_FILE
    with atomic_path(path) as tmp:
        propagated.to_parquet(tmp, index=False)
    write_json_atomic(folder / SUMMARY_FILE, summary)
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
    return RunFolder(run).labels(session)


def default_session_name(
    strategy: LabelStrategy, clustering: str = "head", run_default: str = "head"
) -> str:
    """`random`; `cluster` for cluster labeling of the run's default clustering (`run_default`,
    see `cluster.run_clustering`), which finetune reads by default; `cluster-<clustering>` for
    another one (e.g. `cluster-head` in a run that clusters with k-means by default)."""
    if strategy == "random":
        return "random"
    return "cluster" if clustering == run_default else f"cluster-{clustering}"
