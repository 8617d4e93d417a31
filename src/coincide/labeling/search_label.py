"""Search, then label (agile modeling, as in google-research/perch-hoplite): the hits of
`coincide search` become questions "is this a <class>?" in a labeling session, answered on the
labeling page (or by the oracle), and the answers train the classifier with the cluster labels.

A search session is a labeling session of strategy `search` in the run's label store
(`coincide.store.labels`): its parameters keep the class, the query and the model that found
the hits (the provenance of every answer, with the annotator and time each answer records);
each hit is a request for its window alone (cluster id = window index, as in random sessions).
A later search for the same class with another query is another session.

What the answer kinds mean in a search session:
    label    yes: the window holds the class (and any other labels given);
    skip     no: the window does not hold the class;
    unsure, mixed   no decision: not used for training.

`coincide finetune --with-search` adds the answers of every search session on the store to the
strategy's labels (`merge_search_labels`): a window a person answered about directly gains the
class (yes) or loses it (no) on top of any propagated cluster label; a window with no other
label is trained on the answered class only, its other classes unknown (`TrainingSet`
partial labels, `coincide.classifier.fit.classifier_loss`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from coincide.classifier.train import TrainingSet
from coincide.errors import UserError
from coincide.labeling.select import check_id
from coincide.labeling.sessions import session_of_store
from coincide.store.features import FeatureStore
from coincide.store.labels import LabelStore, Session
from coincide.store.media_labels import check_label

STRATEGY = "search"
SEARCH_ANNOTATOR = "oracle"


def session_name(label: str, query: str) -> str:
    """`search-<label>-<8 hex digits of the query>`: one session per class and query."""
    digest = hashlib.sha256(query.encode()).hexdigest()[:8]
    plain = "".join(ch if ch.isalnum() else "_" for ch in label)[:40]
    return f"search-{plain}-{digest}"


def add_hits(
    label_store: LabelStore,
    run: Path,
    store: FeatureStore,
    label: str,
    query: str,
    model: Any,
    windows: Sequence[int],
    name: str | None = None,
) -> Session:
    """The search session for (`label`, `query`), created when new, with a request per hit
    window (hits already asked keep their request and answer).

    Args:
        run: the folder the session belongs to (the model's run folder).
        store: the store searched; windows: the hits' window indices, nearest first.
        label: the class the hits are asked about; query: what was searched (provenance);
        model: what identifies the model that embedded them (JSON; provenance).
        name: the session name (default `session_name(label, query)`).
    """
    check_label(label, "--label-as")
    name = name or session_name(label, query)
    if Path(name).name != name or name in (".", ".."):
        raise UserError(f"--session {name!r} must be a plain name (no '/'); choose another.")
    params = {"class": label, "query": query, "model": model, "windows": len(store)}

    def check(existing: Session) -> None:
        if existing.strategy != STRATEGY or existing.params.get("class") != label:
            raise UserError(
                f"labeling session {name!r} exists and is not a search for {label!r}; "
                "choose another --session name."
            )

    session = session_of_store(label_store, name, run, store, STRATEGY, 0, params, check)
    label_store.add_requests(session.id, [(int(w), int(w)) for w in windows])
    return session


def answer_with_oracle(
    label_store: LabelStore, session: Session, window_labels: Sequence[Sequence[str]]
) -> int:
    """Answer the session's pending hits from the windows' true labels (the simulated annotator
    of benchmarks and tests): yes when the class is among them, no otherwise. Returns the number
    answered."""
    label = str(session.params["class"])
    answered = 0
    for request in label_store.pending(session.id):
        holds = label in window_labels[request.window_index]
        label_store.answer(
            session.id,
            request.cluster_id,
            request.window_index,
            [label] if holds else [],
            "label" if holds else "skip",
            SEARCH_ANNOTATOR,
        )
        answered += 1
    return answered


def search_sessions(label_store: LabelStore, store_root: Path) -> list[Session]:
    """Every search session of the label store that labels `store_root`."""
    wanted = str(Path(store_root).resolve())
    return [s for s in label_store.sessions() if s.strategy == STRATEGY and s.store == wanted]


def search_answers(
    label_store: LabelStore, sessions: Sequence[Session]
) -> dict[int, dict[str, bool]]:
    """What the search sessions' current answers say: window -> class -> present. When answers
    disagree about a (window, class), the latest answer wins."""
    said: dict[int, dict[str, tuple[float, bool]]] = {}
    for session in sessions:
        label = str(session.params["class"])
        for answer in label_store.answers(session.id):
            at = answer.answered_at.timestamp()
            facts = {label: answer.kind == "label"} if answer.kind in ("label", "skip") else {}
            if answer.kind == "label":
                facts.update({c: True for c in answer.labels})
            if not facts:
                continue
            known = said.setdefault(answer.window_index, {})
            for name, present in facts.items():
                if name not in known or known[name][0] <= at:
                    known[name] = (at, present)
    return {w: {c: present for c, (_, present) in facts.items()} for w, facts in said.items()}


def merge_search_labels(
    labeled: TrainingSet | None, answers: dict[int, dict[str, bool]]
) -> TrainingSet:
    """The training set with the search answers on top (see the module docstring).

    Args:
        labeled: the strategy's labels (closed-world: propagated or random), or None.
        answers: `search_answers`.

    Returns:
        Windows ascending; a window only the search labels is open-world (`closed` False).
        With cluster `groups`, a searched window forms a group of its own.
    """
    rows: dict[int, tuple[set[str], set[str], bool]] = {}
    groups: dict[int, int] = {}
    if labeled is not None:
        closed = labeled.closed if labeled.closed is not None else [True] * len(labeled.windows)
        negatives = labeled.negatives or [[] for _ in labeled.windows]
        for w, names, absent, is_closed in zip(
            labeled.windows, labeled.labels, negatives, closed, strict=True
        ):
            rows[int(w)] = (set(names), set(absent), bool(is_closed))
        if labeled.groups is not None:
            groups = dict(zip(labeled.windows.tolist(), labeled.groups.tolist(), strict=True))
    for window, facts in answers.items():
        positive, negative, is_closed = rows.get(window, (set(), set(), False))
        for name, present in facts.items():
            (positive if present else negative).add(name)
            (negative if present else positive).discard(name)
        rows[window] = (positive, negative, is_closed and bool(positive))
    kept = sorted(w for w, (positive, negative, _) in rows.items() if positive or negative)
    return TrainingSet(
        windows=np.array(kept, dtype=np.int64),
        labels=[sorted(rows[w][0]) for w in kept],
        negatives=[sorted(rows[w][1]) for w in kept],
        closed=np.array([rows[w][2] for w in kept], dtype=bool),
        # Validation holds out answered clusters; a searched window is a group of its own.
        groups=np.array([groups.get(w, check_id(w)) for w in kept], dtype=np.int64)
        if groups
        else None,
    )
