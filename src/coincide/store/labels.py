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

Two implementations behave the same: `SQLiteLabelStore` (a file; each write is its own
transaction, committed before the call returns, in WAL mode so readers do not block the writer)
and `InMemoryLabelStore` (for tests and simulations).
"""

from __future__ import annotations

import copy
import hashlib
import json
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, get_args

import pandas as pd

from coincide.errors import UserError
from coincide.store.media_labels import check_label

AnswerKind = Literal["label", "skip", "unsure", "mixed"]
RequestState = Literal["pending", "answered"]
ANSWER_KINDS: tuple[str, ...] = get_args(AnswerKind)
Clock = Callable[[], float]

# A run's label store: RUN/labels.sqlite (every command that reads or writes labels finds it here).
LABEL_STORE_FILE = "labels.sqlite"


def label_store_path(run_dir: str | Path, db: str | Path | None = None) -> Path:
    """The label store a command uses: `db` when given, else the run's `RUN/labels.sqlite`."""
    return Path(db) if db is not None else Path(run_dir) / LABEL_STORE_FILE


SCHEMA_VERSION = 2
# Version 1 had no answers.given_by; opening such a file adds the column (its answers keep
# NULL: nobody's in particular, so only an undo that names no owner takes them back).
_MIGRATIONS = {1: ("ALTER TABLE answers ADD COLUMN given_by TEXT",)}


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


def _check_claim(
    cluster_id: int,
    answered: bool,
    claimed_by: str | None,
    lease_expires: float | None,
    claimant: str,
    now: float,
) -> None:
    """AnswerConflict unless `claimant` may answer the request (see `LabelStore.answer`)."""
    if answered:
        raise AnswerConflict(
            f"cluster {cluster_id} is already answered; undo that answer to change it."
        )
    if claimed_by not in (None, claimant) and lease_expires is not None and lease_expires > now:
        raise AnswerConflict(f"cluster {cluster_id} is open in another tab; reload the page.")


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

    @abstractmethod
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

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# SQLite


_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    run TEXT NOT NULL,
    store TEXT NOT NULL,
    strategy TEXT NOT NULL,
    seed INTEGER NOT NULL,
    params TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    position INTEGER NOT NULL,
    cluster_id INTEGER NOT NULL,
    window_index INTEGER NOT NULL,
    claimed_by TEXT,
    lease_expires REAL,
    PRIMARY KEY (session_id, cluster_id),
    UNIQUE (session_id, position)
);
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id INTEGER NOT NULL,
    cluster_id INTEGER NOT NULL,
    window_index INTEGER NOT NULL,
    labels TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('label', 'skip', 'unsure', 'mixed')),
    annotator TEXT NOT NULL,
    answered_at REAL NOT NULL,
    undone INTEGER NOT NULL DEFAULT 0,
    given_by TEXT,
    FOREIGN KEY (session_id, cluster_id) REFERENCES requests(session_id, cluster_id)
);
CREATE INDEX IF NOT EXISTS answers_by_request ON answers(session_id, cluster_id, undone);
"""

_REQUEST_COLUMNS = """
    r.session_id, r.position, r.cluster_id, r.window_index, r.claimed_by, r.lease_expires,
    EXISTS (SELECT 1 FROM answers a WHERE a.session_id = r.session_id
            AND a.cluster_id = r.cluster_id AND a.undone = 0) AS answered
"""

_ANSWER_COLUMNS = (
    "a.id, a.session_id, a.cluster_id, a.window_index, a.labels, a.kind, a.annotator, "
    "a.answered_at, a.undone, a.given_by"
)


def _request_from_row(row: sqlite3.Row) -> Request:
    return Request(
        session_id=row["session_id"],
        position=row["position"],
        cluster_id=row["cluster_id"],
        window_index=row["window_index"],
        state="answered" if row["answered"] else "pending",
        claimed_by=row["claimed_by"],
        lease_expires=None if row["lease_expires"] is None else _timestamp(row["lease_expires"]),
    )


def _answer_from_row(row: sqlite3.Row) -> Answer:
    return Answer(
        id=row["id"],
        session_id=row["session_id"],
        cluster_id=row["cluster_id"],
        window_index=row["window_index"],
        labels=tuple(json.loads(row["labels"])),
        kind=row["kind"],
        annotator=row["annotator"],
        answered_at=_timestamp(row["answered_at"]),
        undone=bool(row["undone"]),
        given_by=row["given_by"],
    )


def _session_from_row(row: sqlite3.Row) -> Session:
    return Session(
        id=row["id"],
        name=row["name"],
        run=row["run"],
        store=row["store"],
        strategy=row["strategy"],
        seed=row["seed"],
        params=json.loads(row["params"]),
        created_at=_timestamp(row["created_at"]),
    )


class SQLiteLabelStore(LabelStore):
    """Label store in one SQLite file (created when missing).

    Several processes or threads may open the same file: writes take SQLite's write lock
    (`BEGIN IMMEDIATE`) and wait up to `timeout_s` for it. `clock` (seconds since the epoch)
    stamps answers and leases; tests pass their own.
    """

    def __init__(self, path: str | Path, *, clock: Clock = time.time, timeout_s: float = 30.0):
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        if not self.path.parent.is_dir():
            raise UserError(
                f"folder {self.path.parent} for the label store does not exist; create it or "
                "choose another path."
            )
        try:
            # Autocommit mode: every transaction below is opened and closed explicitly.
            self._db = sqlite3.connect(
                self.path, timeout=timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as err:
            raise UserError(
                f"cannot open label store {self.path} ({err}); check the path."
            ) from err
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL syncs the WAL on every commit: an answer survives a power cut, not only a crash.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._create_schema()
        except sqlite3.DatabaseError as err:
            self._db.close()
            raise UserError(
                f"{self.path} is not a readable label store ({err}); choose another path."
            ) from err
        except BaseException:
            self._db.close()
            raise

    def _create_schema(self) -> None:
        with self._write() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                # One statement at a time: executescript would commit the open transaction.
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version in _MIGRATIONS:
                for statement in _MIGRATIONS[version]:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise UserError(
                    f"{self.path} has label store schema version {version}, this coincide "
                    f"reads version {SCHEMA_VERSION}; use a matching coincide or a new file."
                )

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: a consistent snapshot across several queries."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                self._db.execute("COMMIT")

    def _require_session(self, db: sqlite3.Connection, session_id: int) -> None:
        if db.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone() is None:
            raise ValueError(f"no labeling session with id {session_id} in {self.path}")

    # -- sessions --------------------------------------------------------------------------

    def create_session(
        self, name: str, run: str, store: str, strategy: str, seed: int, params: dict[str, Any]
    ) -> int:
        params_json = json.dumps(params, sort_keys=True)
        with self._write() as db:
            if db.execute("SELECT 1 FROM sessions WHERE name = ?", (name,)).fetchone():
                raise UserError(
                    f"labeling session {name!r} already exists in {self.path}; "
                    "continue it or choose another name."
                )
            cursor = db.execute(
                "INSERT INTO sessions (name, run, store, strategy, seed, params, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, str(run), str(store), strategy, int(seed), params_json, self._clock()),
            )
            return int(cursor.lastrowid)

    def get_session(self, name: str) -> Session | None:
        with self._read() as db:
            row = db.execute("SELECT * FROM sessions WHERE name = ?", (name,)).fetchone()
        return None if row is None else _session_from_row(row)

    def sessions(self) -> list[Session]:
        with self._read() as db:
            rows = db.execute("SELECT * FROM sessions ORDER BY id").fetchall()
        return [_session_from_row(row) for row in rows]

    # -- requests --------------------------------------------------------------------------

    def add_requests(self, session_id: int, items: Iterable[tuple[int, int]]) -> int:
        pairs = _checked_pairs(items)
        with self._write() as db:
            self._require_session(db, session_id)
            known = {
                row[0]
                for row in db.execute(
                    "SELECT cluster_id FROM requests WHERE session_id = ?", (session_id,)
                )
            }
            last = db.execute(
                "SELECT COALESCE(MAX(position), -1) FROM requests WHERE session_id = ?",
                (session_id,),
            ).fetchone()[0]
            new = [(c, w) for c, w in pairs if c not in known]
            db.executemany(
                "INSERT INTO requests (session_id, position, cluster_id, window_index) "
                "VALUES (?, ?, ?, ?)",
                [(session_id, last + 1 + k, c, w) for k, (c, w) in enumerate(new)],
            )
        return len(new)

    def requests(self, session_id: int) -> list[Request]:
        with self._read() as db:
            self._require_session(db, session_id)
            rows = db.execute(
                f"SELECT {_REQUEST_COLUMNS} FROM requests r WHERE r.session_id = ? "
                "ORDER BY r.position",
                (session_id,),
            ).fetchall()
        return [_request_from_row(row) for row in rows]

    def claim_next(self, session_id: int, claimant: str, lease_s: float) -> Request | None:
        with self._write() as db:
            self._require_session(db, session_id)
            now = self._clock()
            pending = (
                f"SELECT {_REQUEST_COLUMNS} FROM requests r WHERE r.session_id = :session "
                "AND NOT EXISTS (SELECT 1 FROM answers a WHERE a.session_id = r.session_id "
                "AND a.cluster_id = r.cluster_id AND a.undone = 0) AND "
            )
            args = {"session": session_id, "claimant": claimant, "now": now}
            # A reloaded tab gets back the cluster it holds, else the first one nobody holds.
            row = (
                db.execute(
                    pending + "r.claimed_by = :claimant AND r.lease_expires > :now "
                    "ORDER BY r.position LIMIT 1",
                    args,
                ).fetchone()
                or db.execute(
                    pending + "(r.claimed_by IS NULL OR r.lease_expires IS NULL "
                    "OR r.lease_expires <= :now) ORDER BY r.position LIMIT 1",
                    args,
                ).fetchone()
            )
            if row is None:
                return None
            chosen = _request_from_row(row)
            db.execute(
                "UPDATE requests SET claimed_by = ?, lease_expires = ? "
                "WHERE session_id = ? AND cluster_id = ?",
                (claimant, now + lease_s, session_id, chosen.cluster_id),
            )
        return replace(chosen, claimed_by=claimant, lease_expires=_timestamp(now + lease_s))

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
        given_by = None if owner is None else owner_digest(owner)
        stored_labels = _checked_answer(labels, kind, annotator)
        cluster_id, window_index = int(cluster_id), int(window_index)
        with self._write() as db:
            self._require_session(db, session_id)
            row = db.execute(
                f"SELECT {_REQUEST_COLUMNS} FROM requests r "
                "WHERE r.session_id = ? AND r.cluster_id = ?",
                (session_id, cluster_id),
            ).fetchone()
            if row is None:
                raise ValueError(f"cluster {cluster_id} was not requested in session {session_id}")
            if row["window_index"] != window_index:
                raise ValueError(
                    f"cluster {cluster_id} is shown through window {row['window_index']}, "
                    f"not {window_index}"
                )
            answered_at = self._clock()
            if claimant is not None:
                _check_claim(
                    cluster_id,
                    bool(row["answered"]),
                    row["claimed_by"],
                    row["lease_expires"],
                    claimant,
                    answered_at,
                )
            cursor = db.execute(
                "INSERT INTO answers (session_id, cluster_id, window_index, labels, kind, "
                "annotator, answered_at, given_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session_id,
                    cluster_id,
                    window_index,
                    json.dumps(list(stored_labels), ensure_ascii=False),
                    kind,
                    annotator,
                    answered_at,
                    given_by,
                ),
            )
            db.execute(
                "UPDATE requests SET claimed_by = NULL, lease_expires = NULL "
                "WHERE session_id = ? AND cluster_id = ?",
                (session_id, cluster_id),
            )
        return Answer(
            id=int(cursor.lastrowid),
            session_id=session_id,
            cluster_id=cluster_id,
            window_index=window_index,
            labels=stored_labels,
            kind=kind,
            annotator=annotator,
            answered_at=_timestamp(answered_at),
            undone=False,
            given_by=given_by,
        )

    def undo_last(
        self, session_id: int, annotator: str | None = None, owner: str | None = None
    ) -> Answer | None:
        with self._write() as db:
            self._require_session(db, session_id)
            query = (
                f"SELECT {_ANSWER_COLUMNS} FROM answers a WHERE a.session_id = ? AND a.undone = 0"
            )
            args: tuple[Any, ...] = (session_id,)
            if annotator is not None:
                query += " AND a.annotator = ?"
                args += (annotator,)
            if owner is not None:
                query += " AND a.given_by = ?"
                args += (owner_digest(owner),)
            row = db.execute(query + " ORDER BY a.id DESC LIMIT 1", args).fetchone()
            if row is None:
                return None
            db.execute("UPDATE answers SET undone = 1 WHERE id = ?", (row["id"],))
        return replace(_answer_from_row(row), undone=True)

    def answers(self, session_id: int) -> list[Answer]:
        with self._read() as db:
            self._require_session(db, session_id)
            rows = db.execute(
                f"SELECT {_ANSWER_COLUMNS} FROM answers a JOIN requests r "
                "ON r.session_id = a.session_id AND r.cluster_id = a.cluster_id "
                "WHERE a.session_id = ? AND a.id = (SELECT MAX(b.id) FROM answers b "
                "WHERE b.session_id = a.session_id AND b.cluster_id = a.cluster_id "
                "AND b.undone = 0) ORDER BY r.position",
                (session_id,),
            ).fetchall()
        return [_answer_from_row(row) for row in rows]

    def history(self, session_id: int) -> list[Answer]:
        with self._read() as db:
            self._require_session(db, session_id)
            rows = db.execute(
                f"SELECT {_ANSWER_COLUMNS} FROM answers a WHERE a.session_id = ? ORDER BY a.id",
                (session_id,),
            ).fetchall()
        return [_answer_from_row(row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


# ---------------------------------------------------------------------------------------------
# In memory


@dataclass
class _Slot:
    """A request as the in-memory store keeps it (its state is derived from the answers)."""

    position: int
    cluster_id: int
    window_index: int
    claimed_by: str | None = None
    lease_expires: float | None = None


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
            return [
                Request(
                    session_id=session_id,
                    position=slot.position,
                    cluster_id=slot.cluster_id,
                    window_index=slot.window_index,
                    state="answered" if slot.cluster_id in answered else "pending",
                    claimed_by=slot.claimed_by,
                    lease_expires=None
                    if slot.lease_expires is None
                    else _timestamp(slot.lease_expires),
                )
                for slot in sorted(slots.values(), key=lambda s: s.position)
            ]

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
        given_by = None if owner is None else owner_digest(owner)
        stored_labels = _checked_answer(labels, kind, annotator)
        cluster_id, window_index = int(cluster_id), int(window_index)
        with self._lock:
            slot = self._slots_of(session_id).get(cluster_id)
            if slot is None:
                raise ValueError(f"cluster {cluster_id} was not requested in session {session_id}")
            if slot.window_index != window_index:
                raise ValueError(
                    f"cluster {cluster_id} is shown through window {slot.window_index}, "
                    f"not {window_index}"
                )
            if claimant is not None:
                answered = cluster_id in self._answered(session_id)
                _check_claim(
                    cluster_id,
                    answered,
                    slot.claimed_by,
                    slot.lease_expires,
                    claimant,
                    self._clock(),
                )
            answer = Answer(
                id=len(self._answers) + 1,
                session_id=session_id,
                cluster_id=cluster_id,
                window_index=window_index,
                labels=stored_labels,
                kind=kind,
                annotator=annotator,
                answered_at=_timestamp(self._clock()),
                undone=False,
                given_by=given_by,
            )
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
