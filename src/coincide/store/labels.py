"""Label store: labeling sessions, the clusters put to an annotator, and every answer given.

The store owns the labels; the web page and the oracle only read requests and write answers
through this interface (as perch-hoplite keeps its labels behind a database interface), so a
labeling session survives a closed tab, a crash or a second annotator.

- A session is one labeling campaign over a run's clustering: its strategy, seed and parameters.
- A request asks for one cluster, showing one chosen member (a window index); requests keep the
  order in which they were added (`position`), which is the order they are handed out.
- An answer gives the request's labels, or says `skip`, `unsure` or `mixed`, with who answered
  and when. Answers are only ever added: re-answering adds a newer answer that wins, and undo
  marks an answer undone; both stay in `history`. A request is answered while it has an answer
  that is not undone, so undoing the only answer makes it pending again, and undoing a
  re-answer brings the previous answer back.
- A claim leases a pending request to one annotator (a browser tab) for some seconds so that two
  tabs are not shown the same cluster; an expired lease can be claimed by anyone.

Two implementations behave the same: `SQLiteLabelStore` (`coincide.store.labels_sqlite`: a
file; each write is its own transaction, committed before the call returns, in WAL mode so
readers do not block the writer) and `InMemoryLabelStore` (here; for tests and simulations).
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Self, get_args

import pandas as pd

from coincide.errors import UserError
from coincide.run_folder import LABEL_STORE_FILE
from coincide.store.media_labels import check_label

AnswerKind = Literal["label", "skip", "unsure", "mixed"]
RequestState = Literal["pending", "answered"]
ANSWER_KINDS: tuple[str, ...] = get_args(AnswerKind)
Clock = Callable[[], float]

# A run's label store: RUN/labels.sqlite (every command that reads or writes labels finds it here).


def label_store_path(run_dir: str | Path, db: str | Path | None = None) -> Path:
    """The label store a command uses: `db` when given, else the run's `RUN/labels.sqlite`."""
    return Path(db) if db is not None else Path(run_dir) / LABEL_STORE_FILE


def owner_digest(owner: str) -> str:
    """What the label store keeps of an answer's owner (a labeling page's private browser key):
    a digest, so that the file does not hold the key that lets one undo those answers."""
    return hashlib.sha256(owner.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Session:
    """One labeling campaign: which run and store it labels, how clusters were chosen."""

    id: int
    name: str
    run: str
    store: str
    strategy: str
    seed: int
    params: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class Request:
    """One cluster put to the annotator, shown through one member window."""

    session_id: int
    position: int
    cluster_id: int
    window_index: int
    state: RequestState
    claimed_by: str | None
    lease_expires: datetime | None


@dataclass(frozen=True)
class Answer:
    """One answer to a request.

    `kind` is `label` (one or more labels for the cluster), `skip` (no labels), `unsure` (labels
    optional, a tentative guess) or `mixed` (the cluster holds several sounds; labels optional,
    those heard). `annotator` is a person's name or `oracle`.
    """

    id: int
    session_id: int
    cluster_id: int
    window_index: int
    labels: tuple[str, ...]
    kind: AnswerKind
    annotator: str
    answered_at: datetime
    undone: bool
    given_by: str | None = None  # owner_digest of the page that gave it; None from the CLI


def _timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class AnswerConflict(Exception):
    """An answer refused because the request changed hands: it is answered already, or leased
    to another claimant (another tab, or another server on the same label store)."""


def _checked_answer(labels: Sequence[str], kind: str, annotator: str) -> tuple[str, ...]:
    """The labels to store, after checking they fit the answer kind."""
    if kind not in ANSWER_KINDS:
        raise ValueError(f"answer kind must be one of {ANSWER_KINDS}, got {kind!r}")
    if isinstance(labels, str):
        raise TypeError("labels must be a list of label strings, not one string")
    if not annotator.strip():
        raise UserError("the annotator name is empty; give a name (or 'oracle').")
    for label in labels:
        if not isinstance(label, str) or not label.strip():
            raise UserError(f"label {label!r} is empty or not text; type a label or skip.")
        check_label(label, "the answer")
    # Labels are a set kept in the order given; the text itself is stored exactly as typed.
    unique = tuple(dict.fromkeys(labels))
    if kind == "label" and not unique:
        raise UserError("an answer of kind 'label' needs at least one label; type one or skip.")
    if kind == "skip" and unique:
        raise UserError("a skipped cluster carries no labels; answer 'label' to give labels.")
    return unique


@dataclass
class _Slot:
    """A request as a store keeps it: its lease in seconds since the epoch; its state is derived
    from the answers."""

    position: int
    cluster_id: int
    window_index: int
    claimed_by: str | None = None
    lease_expires: float | None = None

    def request(self, session_id: int, answered: bool) -> Request:
        """The request as the interface shows it."""
        return Request(
            session_id=session_id,
            position=self.position,
            cluster_id=self.cluster_id,
            window_index=self.window_index,
            state="answered" if answered else "pending",
            claimed_by=self.claimed_by,
            lease_expires=None if self.lease_expires is None else _timestamp(self.lease_expires),
        )


def _requested(draft: Answer, slot: _Slot | None) -> _Slot:
    """The request that `draft` answers; ValueError unless its session asked for the cluster
    through the draft's window."""
    if slot is None:
        raise ValueError(
            f"cluster {draft.cluster_id} was not requested in session {draft.session_id}"
        )
    if slot.window_index != draft.window_index:
        raise ValueError(
            f"cluster {draft.cluster_id} is shown through window {slot.window_index}, "
            f"not {draft.window_index}"
        )
    return slot


def _check_claim(slot: _Slot, answered: bool, claimant: str, now: float) -> None:
    """AnswerConflict unless `claimant` may answer the request (see `LabelStore.answer`)."""
    if answered:
        raise AnswerConflict(
            f"cluster {slot.cluster_id} is already answered; undo that answer to change it."
        )
    lease = slot.lease_expires
    if slot.claimed_by not in (None, claimant) and lease is not None and lease > now:
        raise AnswerConflict(f"cluster {slot.cluster_id} is open in another tab; reload the page.")


def _checked_pairs(items: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """(cluster_id, window_index) pairs as ints, first occurrence of a cluster kept."""
    pairs: dict[int, int] = {}
    for cluster_id, window_index in items:
        if int(window_index) < 0:
            raise ValueError(f"window index must be >= 0, got {window_index}")
        pairs.setdefault(int(cluster_id), int(window_index))
    return list(pairs.items())


class LabelStore(ABC):
    """Sessions, requests and answers; see the module docstring for the semantics.

    Every method is safe to call from several threads; writes are durable when they return.
    """

    # -- sessions --------------------------------------------------------------------------

    @abstractmethod
    def create_session(
        self, name: str, run: str, store: str, strategy: str, seed: int, params: dict[str, Any]
    ) -> int:
        """Start a session; returns its id. `params` must be JSON-serialisable.
        Raises UserError when a session of that name exists."""

    @abstractmethod
    def get_session(self, name: str) -> Session | None:
        """The session called `name`, or None."""

    @abstractmethod
    def sessions(self) -> list[Session]:
        """All sessions, oldest first."""

    # -- requests --------------------------------------------------------------------------

    @abstractmethod
    def add_requests(self, session_id: int, items: Iterable[tuple[int, int]]) -> int:
        """Append `(cluster_id, window_index)` requests after the session's existing ones, in
        the given order. A cluster already in the session keeps its request (and member), so
        adding the same clusters again is a no-op. Returns how many requests were added."""

    @abstractmethod
    def requests(self, session_id: int) -> list[Request]:
        """All requests of the session in order, with their current state and claim."""

    @abstractmethod
    def claim_next(self, session_id: int, claimant: str, lease_s: float) -> Request | None:
        """Lease the next pending request to `claimant` for `lease_s` seconds and return it
        (claimed), or None when every pending request is leased to someone else or none is
        left. A claimant asking again gets the request it holds, with its lease renewed."""

    def pending(self, session_id: int) -> list[Request]:
        """Pending requests of the session in order, claimed or not."""
        return [r for r in self.requests(session_id) if r.state == "pending"]

    def progress(self, session_id: int) -> tuple[int, int]:
        """`(answered, total)` requests of the session."""
        requests = self.requests(session_id)
        return sum(r.state == "answered" for r in requests), len(requests)

    # -- answers ---------------------------------------------------------------------------

    def answer(
        self,
        session_id: int,
        cluster_id: int,
        window_index: int,
        labels: Sequence[str],
        kind: AnswerKind,
        annotator: str,
        claimant: str | None = None,
        owner: str | None = None,
    ) -> Answer:
        """Record an answer to the session's request for `cluster_id` (whose member must be
        `window_index`), committed before returning; it supersedes earlier answers to the same
        request, which stay in the history. Releases the request's claim.

        With `claimant` (a labeling page's tab), the answer is only taken for a pending request
        that no other claimant holds under an unexpired lease, checked in the same transaction
        as the insert, so two servers on one label store cannot both answer a cluster;
        AnswerConflict otherwise. `owner` (a page's private key) is kept as a digest so that
        only that page can undo the answer (see `undo_last`)."""
        draft = Answer(
            id=0,  # numbered and stamped by the store
            session_id=session_id,
            cluster_id=int(cluster_id),
            window_index=int(window_index),
            labels=_checked_answer(labels, kind, annotator),
            kind=kind,
            annotator=annotator,
            answered_at=_timestamp(0),
            undone=False,
            given_by=None if owner is None else owner_digest(owner),
        )
        return self._add_answer(draft, claimant)

    @abstractmethod
    def _add_answer(self, draft: Answer, claimant: str | None) -> Answer:
        """Store `draft` (checked; its id and time still to be given) as `answer` describes and
        return it as stored."""

    @abstractmethod
    def undo_last(
        self, session_id: int, annotator: str | None = None, owner: str | None = None
    ) -> Answer | None:
        """Mark the session's latest answer that is not undone (by `annotator`, and given
        with `owner`'s key, when given) as undone, and return it; None when there is nothing
        to undo."""

    @abstractmethod
    def answers(self, session_id: int) -> list[Answer]:
        """The current answer of every answered request (its latest answer not undone), in
        request order."""

    @abstractmethod
    def history(self, session_id: int) -> list[Answer]:
        """Every answer ever given in the session, undone ones included, oldest first."""

    def export(self, session_id: int) -> pd.DataFrame:
        """One row per request, in order: session, position, cluster_id, window_index, state,
        and the current answer's labels (a list of strings), kind, annotator, answered_at (UTC);
        the answer columns are missing values (None / NA / NaT) for a pending request."""
        session = next((s for s in self.sessions() if s.id == session_id), None)
        if session is None:
            raise ValueError(f"no labeling session with id {session_id}")
        current = {a.cluster_id: a for a in self.answers(session_id)}
        rows = []
        for request in self.requests(session_id):
            answer = current.get(request.cluster_id)
            rows.append(
                {
                    "session": session.name,
                    "position": request.position,
                    "cluster_id": request.cluster_id,
                    "window_index": request.window_index,
                    "state": request.state,
                    "labels": list(answer.labels) if answer else None,
                    "kind": answer.kind if answer else None,
                    "annotator": answer.annotator if answer else None,
                    "answered_at": answer.answered_at if answer else None,
                }
            )
        columns = [
            "session",
            "position",
            "cluster_id",
            "window_index",
            "state",
            "labels",
            "kind",
            "annotator",
            "answered_at",
        ]
        return pd.DataFrame(rows, columns=columns)

    # -- lifetime --------------------------------------------------------------------------

    @abstractmethod
    def close(self) -> None:
        """Release the store (nothing is lost: every write was already committed)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# In memory


class InMemoryLabelStore(LabelStore):
    """The same store held in dictionaries, for tests and simulated labeling; nothing persists."""

    def __init__(self, *, clock: Clock = time.time):
        self._clock = clock
        self._lock = threading.RLock()
        self._sessions: dict[int, Session] = {}
        self._slots: dict[int, dict[int, _Slot]] = {}  # session id -> cluster id -> request
        self._answers: list[Answer] = []  # every answer in arrival order

    def _slots_of(self, session_id: int) -> dict[int, _Slot]:
        if session_id not in self._slots:
            raise ValueError(f"no labeling session with id {session_id} in memory")
        return self._slots[session_id]

    def _answered(self, session_id: int) -> set[int]:
        return {a.cluster_id for a in self._answers if a.session_id == session_id and not a.undone}

    # -- sessions --------------------------------------------------------------------------

    def create_session(
        self, name: str, run: str, store: str, strategy: str, seed: int, params: dict[str, Any]
    ) -> int:
        # The JSON round trip gives the SQLite store's behaviour: a private copy, and an error
        # for parameters that could not be saved.
        params_json = json.dumps(params, sort_keys=True)
        with self._lock:
            if any(s.name == name for s in self._sessions.values()):
                raise UserError(
                    f"labeling session {name!r} already exists; continue it or choose another name."
                )
            session_id = len(self._sessions) + 1
            self._sessions[session_id] = Session(
                id=session_id,
                name=name,
                run=str(run),
                store=str(store),
                strategy=strategy,
                seed=int(seed),
                params=json.loads(params_json),
                created_at=_timestamp(self._clock()),
            )
            self._slots[session_id] = {}
            return session_id

    def get_session(self, name: str) -> Session | None:
        with self._lock:
            found = next((s for s in self._sessions.values() if s.name == name), None)
            return None if found is None else replace(found, params=copy.deepcopy(found.params))

    def sessions(self) -> list[Session]:
        with self._lock:
            return [replace(s, params=copy.deepcopy(s.params)) for s in self._sessions.values()]

    # -- requests --------------------------------------------------------------------------

    def add_requests(self, session_id: int, items: Iterable[tuple[int, int]]) -> int:
        pairs = _checked_pairs(items)
        with self._lock:
            slots = self._slots_of(session_id)
            position = max((s.position for s in slots.values()), default=-1) + 1
            added = 0
            for cluster_id, window_index in pairs:
                if cluster_id not in slots:
                    slots[cluster_id] = _Slot(position + added, cluster_id, window_index)
                    added += 1
            return added

    def requests(self, session_id: int) -> list[Request]:
        with self._lock:
            slots = self._slots_of(session_id)
            answered = self._answered(session_id)
            ordered = sorted(slots.values(), key=lambda s: s.position)
            return [slot.request(session_id, slot.cluster_id in answered) for slot in ordered]

    def claim_next(self, session_id: int, claimant: str, lease_s: float) -> Request | None:
        with self._lock:
            now = self._clock()
            pending = [r for r in self.requests(session_id) if r.state == "pending"]
            at = _timestamp(now)
            # A reloaded tab gets back the cluster it holds, else the first one nobody holds.
            held = (
                r
                for r in pending
                if r.claimed_by == claimant and r.lease_expires and r.lease_expires > at
            )
            free = (
                r
                for r in pending
                if r.claimed_by is None or r.lease_expires is None or r.lease_expires <= at
            )
            chosen = next(held, None) or next(free, None)
            if chosen is None:
                return None
            slot = self._slots[session_id][chosen.cluster_id]
            slot.claimed_by, slot.lease_expires = claimant, now + lease_s
            return replace(chosen, claimed_by=claimant, lease_expires=_timestamp(now + lease_s))

    # -- answers ---------------------------------------------------------------------------

    def _add_answer(self, draft: Answer, claimant: str | None) -> Answer:
        with self._lock:
            slots = self._slots_of(draft.session_id)
            slot = _requested(draft, slots.get(draft.cluster_id))
            now = self._clock()
            if claimant is not None:
                answered = draft.cluster_id in self._answered(draft.session_id)
                _check_claim(slot, answered, claimant, now)
            answer = replace(draft, id=len(self._answers) + 1, answered_at=_timestamp(now))
            self._answers.append(answer)
            slot.claimed_by, slot.lease_expires = None, None
            return answer

    def undo_last(
        self, session_id: int, annotator: str | None = None, owner: str | None = None
    ) -> Answer | None:
        digest = None if owner is None else owner_digest(owner)
        with self._lock:
            self._slots_of(session_id)
            for k in range(len(self._answers) - 1, -1, -1):
                candidate = self._answers[k]
                if candidate.session_id != session_id or candidate.undone:
                    continue
                if annotator is not None and candidate.annotator != annotator:
                    continue
                if digest is not None and candidate.given_by != digest:
                    continue
                self._answers[k] = replace(candidate, undone=True)
                return self._answers[k]
            return None

    def answers(self, session_id: int) -> list[Answer]:
        with self._lock:
            slots = self._slots_of(session_id)
            current: dict[int, Answer] = {}
            for answer in self._answers:
                if answer.session_id == session_id and not answer.undone:
                    current[answer.cluster_id] = answer  # later answers win
            return sorted(current.values(), key=lambda a: slots[a.cluster_id].position)

    def history(self, session_id: int) -> list[Answer]:
        with self._lock:
            self._slots_of(session_id)
            return [a for a in self._answers if a.session_id == session_id]

    def close(self) -> None:
        """Nothing to release; kept for the shared interface."""
