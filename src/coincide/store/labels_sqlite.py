"""The SQLite implementation of the label store (`coincide.store.labels` has the interface,
the records and the in-memory implementation): a file, each write its own transaction committed
before the call returns, in WAL mode so readers do not block the writer."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, TypeVar

from coincide.errors import UserError
from coincide.store.labels import (
    Answer,
    Clock,
    LabelStore,
    Request,
    Session,
    _check_claim,
    _checked_pairs,
    _requested,
    _Slot,
    _timestamp,
    owner_digest,
)

SCHEMA_VERSION = 2
# Version 1 had no answers.given_by; opening such a file adds the column (its answers keep
# NULL: nobody's in particular, so only an undo that names no owner takes them back).
_MIGRATIONS = {1: ("ALTER TABLE answers ADD COLUMN given_by TEXT",)}
_R = TypeVar("_R")  # a record of coincide.store.labels

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


def _record(cls: type[_R], row: sqlite3.Row, **decoded: Any) -> _R:
    """A record whose every field is the row's column of the same name, but for `decoded`: the
    fields stored in another form (JSON text, seconds since the epoch, 0 or 1)."""
    columns = {f.name: row[f.name] for f in fields(cls) if f.name not in decoded}
    return cls(**columns, **decoded)


def _slot_from_row(row: sqlite3.Row) -> _Slot:
    return _record(_Slot, row)


def _request_from_row(row: sqlite3.Row) -> Request:
    return _slot_from_row(row).request(row["session_id"], bool(row["answered"]))


def _answer_from_row(row: sqlite3.Row) -> Answer:
    labels = tuple(json.loads(row["labels"]))
    answered_at = _timestamp(row["answered_at"])
    return _record(Answer, row, labels=labels, answered_at=answered_at, undone=bool(row["undone"]))


def _session_from_row(row: sqlite3.Row) -> Session:
    created_at = _timestamp(row["created_at"])
    return _record(Session, row, params=json.loads(row["params"]), created_at=created_at)


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
        with self._transaction(write=True) as db:
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
    def _transaction(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction, a consistent snapshot across several queries (a write one holds
        SQLite's write lock from its start): committed when the block ends, rolled back if it
        raises."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _session_rows(self, session_id: int, query: str) -> list[sqlite3.Row]:
        """The rows of `query` (whose one parameter is the session id), read in one snapshot."""
        with self._transaction() as db:
            self._require_session(db, session_id)
            return db.execute(query, (session_id,)).fetchall()

    def _require_session(self, db: sqlite3.Connection, session_id: int) -> None:
        if db.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone() is None:
            raise ValueError(f"no labeling session with id {session_id} in {self.path}")

    # -- sessions --------------------------------------------------------------------------

    def create_session(
        self, name: str, run: str, store: str, strategy: str, seed: int, params: dict[str, Any]
    ) -> int:
        params_json = json.dumps(params, sort_keys=True)
        with self._transaction(write=True) as db:
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
        with self._transaction() as db:
            row = db.execute("SELECT * FROM sessions WHERE name = ?", (name,)).fetchone()
        return None if row is None else _session_from_row(row)

    def sessions(self) -> list[Session]:
        with self._transaction() as db:
            rows = db.execute("SELECT * FROM sessions ORDER BY id").fetchall()
        return [_session_from_row(row) for row in rows]

    # -- requests --------------------------------------------------------------------------

    def add_requests(self, session_id: int, items: Iterable[tuple[int, int]]) -> int:
        pairs = _checked_pairs(items)
        with self._transaction(write=True) as db:
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
        rows = self._session_rows(
            session_id,
            f"SELECT {_REQUEST_COLUMNS} FROM requests r WHERE r.session_id = ? ORDER BY r.position",
        )
        return [_request_from_row(row) for row in rows]

    def claim_next(self, session_id: int, claimant: str, lease_s: float) -> Request | None:
        with self._transaction(write=True) as db:
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

    def _add_answer(self, draft: Answer, claimant: str | None) -> Answer:
        with self._transaction(write=True) as db:
            self._require_session(db, draft.session_id)
            row = db.execute(
                f"SELECT {_REQUEST_COLUMNS} FROM requests r "
                "WHERE r.session_id = ? AND r.cluster_id = ?",
                (draft.session_id, draft.cluster_id),
            ).fetchone()
            slot = _requested(draft, None if row is None else _slot_from_row(row))
            now = self._clock()
            if claimant is not None:
                _check_claim(slot, bool(row["answered"]), claimant, now)
            cursor = db.execute(
                "INSERT INTO answers (session_id, cluster_id, window_index, labels, kind, "
                "annotator, answered_at, given_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    draft.session_id,
                    draft.cluster_id,
                    draft.window_index,
                    json.dumps(list(draft.labels), ensure_ascii=False),
                    draft.kind,
                    draft.annotator,
                    now,
                    draft.given_by,
                ),
            )
            db.execute(
                "UPDATE requests SET claimed_by = NULL, lease_expires = NULL "
                "WHERE session_id = ? AND cluster_id = ?",
                (draft.session_id, draft.cluster_id),
            )
        return replace(draft, id=int(cursor.lastrowid), answered_at=_timestamp(now))

    def undo_last(
        self, session_id: int, annotator: str | None = None, owner: str | None = None
    ) -> Answer | None:
        with self._transaction(write=True) as db:
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
        rows = self._session_rows(
            session_id,
            f"SELECT {_ANSWER_COLUMNS} FROM answers a JOIN requests r "
            "ON r.session_id = a.session_id AND r.cluster_id = a.cluster_id "
            "WHERE a.session_id = ? AND a.id = (SELECT MAX(b.id) FROM answers b "
            "WHERE b.session_id = a.session_id AND b.cluster_id = a.cluster_id "
            "AND b.undone = 0) ORDER BY r.position",
        )
        return [_answer_from_row(row) for row in rows]

    def history(self, session_id: int) -> list[Answer]:
        rows = self._session_rows(
            session_id,
            f"SELECT {_ANSWER_COLUMNS} FROM answers a WHERE a.session_id = ? ORDER BY a.id",
        )
        return [_answer_from_row(row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
