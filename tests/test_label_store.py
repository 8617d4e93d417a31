"""The label store: both implementations pass the same tests; SQLite also survives reopen, crash."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from coincide.errors import UserError
from coincide.store.labels import AnswerConflict, InMemoryLabelStore, LabelStore
from coincide.store.labels_sqlite import SQLiteLabelStore


class FakeClock:
    """Seconds since the epoch, moved by hand so that leases expire without sleeping."""

    def __init__(self, start: float = 1_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "memory"])
def open_store(request, tmp_path) -> Callable[[FakeClock], LabelStore]:
    """A factory of stores of one kind (a new SQLite connection to the same file each call)."""
    opened: list[LabelStore] = []

    def factory(clock: FakeClock) -> LabelStore:
        if request.param == "sqlite":
            store: LabelStore = SQLiteLabelStore(tmp_path / "labels.sqlite", clock=clock)
        else:
            store = InMemoryLabelStore(clock=clock)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _session(store: LabelStore, name: str = "s1") -> int:
    return store.create_session(
        name, run="runs/a", store="stores/b", strategy="cluster", seed=3, params={"budget": 4}
    )


# ---------------------------------------------------------------------------------------------
# Sessions and requests


def test_session_round_trip(open_store, clock):
    store = open_store(clock)
    params = {"budget": 370, "order": "random", "nested": {"k": [1, 2]}}
    session_id = store.create_session("first", "runs/a", "stores/b", "cluster", 7, params)
    session = store.get_session("first")
    assert session is not None
    assert (session.id, session.name, session.run, session.store) == (
        session_id,
        "first",
        "runs/a",
        "stores/b",
    )
    assert (session.strategy, session.seed, session.params) == ("cluster", 7, params)
    assert session.created_at == datetime.fromtimestamp(1_000.0, UTC)
    assert store.get_session("absent") is None
    other = store.create_session("second", "runs/a", "stores/b", "random", 1, {})
    assert [s.id for s in store.sessions()] == [session_id, other]
    with pytest.raises(UserError, match="'first' already exists"):
        store.create_session("first", "runs/a", "stores/b", "cluster", 7, {})


def test_requests_keep_order_and_adding_a_cluster_again_is_a_no_op(open_store, clock):
    store = open_store(clock)
    session_id = _session(store)
    assert store.add_requests(session_id, [(5, 50), (2, 20), (9, 90), (5, 51)]) == 3
    # Cluster 2 is already requested (its member stays 20); cluster 7 is appended.
    assert store.add_requests(session_id, [(np.int64(2), np.int64(99)), (7, 70)]) == 1
    requests = store.requests(session_id)
    assert [(r.position, r.cluster_id, r.window_index) for r in requests] == [
        (0, 5, 50),
        (1, 2, 20),
        (2, 9, 90),
        (3, 7, 70),
    ]
    assert {r.state for r in requests} == {"pending"}
    assert store.progress(session_id) == (0, 4)
    # Requests belong to their session.
    other = _session(store, "s2")
    assert store.requests(other) == []
    with pytest.raises(ValueError, match="no labeling session"):
        store.requests(12345)


# ---------------------------------------------------------------------------------------------
# Answers, history, undo


def test_answer_round_trip(open_store, clock):
    store = open_store(clock)
    session_id = _session(store)
    store.add_requests(session_id, [(5, 50), (2, 20), (9, 90)])
    clock.now = 2_000.0
    given = store.answer(session_id, 2, 20, ["dog", "bark"], "label", "ana")
    assert given.labels == ("dog", "bark")
    assert given.answered_at == datetime.fromtimestamp(2_000.0, UTC)
    (stored,) = store.answers(session_id)
    assert stored == given
    assert [(r.cluster_id, r.state) for r in store.requests(session_id)] == [
        (5, "pending"),
        (2, "answered"),
        (9, "pending"),
    ]
    assert [r.cluster_id for r in store.pending(session_id)] == [5, 9]
    assert store.progress(session_id) == (1, 3)
    store.answer(session_id, 9, 90, [], "skip", "oracle")
    store.answer(session_id, 5, 50, ["rain"], "unsure", "ana")
    assert [(a.cluster_id, a.kind, a.labels) for a in store.answers(session_id)] == [
        (5, "unsure", ("rain",)),
        (2, "label", ("dog", "bark")),
        (9, "skip", ()),
    ]
    assert store.progress(session_id) == (3, 3)


def test_a_claimant_answers_only_a_pending_request_it_may_hold(open_store, clock):
    store = open_store(clock)
    session_id = _session(store)
    store.add_requests(session_id, [(1, 10), (2, 20)])
    clock.now = 100.0
    assert store.claim_next(session_id, "tab-a", lease_s=60).cluster_id == 1
    with pytest.raises(AnswerConflict, match="open in another tab"):
        store.answer(session_id, 1, 10, ["cat"], "label", "bo", claimant="tab-b")
    store.answer(session_id, 1, 10, ["dog"], "label", "ana", claimant="tab-a")
    with pytest.raises(AnswerConflict, match="already answered"):
        store.answer(session_id, 1, 10, ["cat"], "label", "bo", claimant="tab-b")
    clock.now = 200.0
    assert store.claim_next(session_id, "tab-a", lease_s=60).cluster_id == 2
    clock.now = 300.0  # tab-a's lease ran out: another tab may answer
    store.answer(session_id, 2, 20, ["rain"], "label", "bo", claimant="tab-b")
    assert [(a.cluster_id, a.labels) for a in store.history(session_id)] == [
        (1, ("dog",)),
        (2, ("rain",)),
    ]


def test_two_servers_on_one_label_store_cannot_both_answer_a_cluster(tmp_path):
    """Each thread is a server with its own connection; all answer cluster c at once."""
    path = tmp_path / "labels.sqlite"
    with SQLiteLabelStore(path) as first:
        session_id = _session(first)
        first.add_requests(session_id, [(c, 10 * c) for c in range(20)])
    servers = [SQLiteLabelStore(path) for _ in range(4)]
    outcomes: dict[int, list[str]] = {c: [] for c in range(20)}
    for c in range(20):
        barrier = threading.Barrier(len(servers))

        def answer(k: int, store: SQLiteLabelStore, c: int = c, barrier=barrier) -> None:
            barrier.wait()
            try:
                store.answer(session_id, c, 10 * c, [f"label{k}"], "label", f"a{k}", f"tab{k}")
                outcomes[c].append("ok")
            except AnswerConflict:
                outcomes[c].append("conflict")

        threads = [threading.Thread(target=answer, args=(k, s)) for k, s in enumerate(servers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for store in servers:
        store.close()
    assert all(sorted(o) == ["conflict"] * 3 + ["ok"] for o in outcomes.values()), outcomes
    with SQLiteLabelStore(path) as store:
        assert len(store.history(session_id)) == 20


def test_reanswering_keeps_history_and_the_latest_wins(open_store, clock):
    store = open_store(clock)
    session_id = _session(store)
    store.add_requests(session_id, [(1, 10)])
    first = store.answer(session_id, 1, 10, ["dog"], "label", "ana")
    clock.now += 5
    second = store.answer(session_id, 1, 10, ["wolf"], "label", "ben")
    assert store.answers(session_id) == [second]
    assert store.history(session_id) == [first, second]
    assert store.progress(session_id) == (1, 1)


def test_undo_makes_the_request_pending_and_keeps_the_history(open_store, clock):
    store = open_store(clock)
    session_id = _session(store)
    store.add_requests(session_id, [(1, 10), (2, 20)])
    first = store.answer(session_id, 1, 10, ["dog"], "label", "ana")
    second = store.answer(session_id, 2, 20, ["cat"], "label", "ana")
    undone = store.undo_last(session_id)
    assert undone is not None
    assert (undone.id, undone.undone) == (second.id, True)
    assert store.answers(session_id) == [first]
    assert [r.cluster_id for r in store.pending(session_id)] == [2]
    assert [a.undone for a in store.history(session_id)] == [False, True]
    # Undo again: the first answer goes too; then nothing is left to undo.
    assert store.undo_last(session_id).id == first.id
    assert store.progress(session_id) == (0, 2)
    assert store.undo_last(session_id) is None


def test_undoing_a_reanswer_brings_the_previous_answer_back(open_store, clock):
    store = open_store(clock)
    session_id = _session(store)
    store.add_requests(session_id, [(1, 10)])
    first = store.answer(session_id, 1, 10, ["dog"], "label", "ana")
    store.answer(session_id, 1, 10, ["wolf"], "label", "ana")
    store.undo_last(session_id)
    assert store.answers(session_id) == [first]
    assert store.progress(session_id) == (1, 1)


def test_undo_by_annotator_leaves_other_annotators_answers(open_store, clock):
    store = open_store(clock)
    session_id = _session(store)
    store.add_requests(session_id, [(1, 10), (2, 20)])
    mine = store.answer(session_id, 1, 10, ["dog"], "label", "ana")
    theirs = store.answer(session_id, 2, 20, ["cat"], "label", "ben")
    assert store.undo_last(session_id, annotator="ana").id == mine.id
    assert store.answers(session_id) == [theirs]
    assert store.undo_last(session_id, annotator="ana") is None


def test_undo_by_owner_takes_back_only_that_pages_answers(open_store, clock):
    # Two people typing the same name on two pages: each page undoes only what it gave.
    store = open_store(clock)
    session_id = _session(store)
    store.add_requests(session_id, [(1, 10), (2, 20), (3, 30)])
    mine = store.answer(session_id, 1, 10, ["dog"], "label", "ana", owner="owner-a")
    store.answer(session_id, 2, 20, ["cat"], "label", "ana", owner="owner-b")
    store.answer(session_id, 3, 30, ["owl"], "label", "ana")  # from the CLI: no owner
    assert mine.given_by is not None and mine.given_by != "owner-a"  # a digest, not the key
    assert store.undo_last(session_id, annotator="ana", owner="owner-a").id == mine.id
    assert store.undo_last(session_id, annotator="ana", owner="owner-a") is None
    assert store.undo_last(session_id, annotator="ana", owner="owner-c") is None
    assert [a.cluster_id for a in store.answers(session_id)] == [2, 3]
    # Without an owner (the CLI), the latest answer goes, whoever gave it.
    assert store.undo_last(session_id, annotator="ana").cluster_id == 3


def test_a_version_1_label_store_is_upgraded_without_losing_answers(tmp_path, clock):
    path = tmp_path / "labels.sqlite"
    store = SQLiteLabelStore(path, clock=clock)
    session_id = _session(store)
    store.add_requests(session_id, [(1, 10), (2, 20)])
    kept = store.answer(session_id, 1, 10, ["dog"], "label", "ana")
    store.close()
    # Make it the file an older coincide wrote: no given_by column, schema version 1.
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE answers DROP COLUMN given_by")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    store = SQLiteLabelStore(path, clock=clock)
    assert [(a.id, a.labels, a.given_by) for a in store.answers(session_id)] == [
        (kept.id, ("dog",), None)
    ]
    store.answer(session_id, 2, 20, ["cat"], "label", "ben", owner="owner-b")
    assert store.undo_last(session_id, owner="owner-b").cluster_id == 2
    store.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 2


def test_answers_are_checked(open_store, clock):
    store = open_store(clock)
    session_id = _session(store)
    store.add_requests(session_id, [(1, 10)])
    with pytest.raises(UserError, match="at least one label"):
        store.answer(session_id, 1, 10, [], "label", "ana")
    with pytest.raises(UserError, match="skipped"):
        store.answer(session_id, 1, 10, ["dog"], "skip", "ana")
    with pytest.raises(UserError, match="empty"):
        store.answer(session_id, 1, 10, ["dog", "  "], "label", "ana")
    with pytest.raises(UserError, match="annotator"):
        store.answer(session_id, 1, 10, ["dog"], "label", "")
    with pytest.raises(ValueError, match="kind"):
        store.answer(session_id, 1, 10, ["dog"], "maybe", "ana")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not requested"):
        store.answer(session_id, 2, 10, ["dog"], "label", "ana")
    with pytest.raises(ValueError, match="window 10"):
        store.answer(session_id, 1, 11, ["dog"], "label", "ana")
    # One class name per line in an export's labels.txt: a newline would shift every line.
    for bad in ["dog\nbark", "tab\there", "nul\x00", "line\u2028sep", "cr\r"]:
        with pytest.raises(UserError, match="control character"):
            store.answer(session_id, 1, 10, [bad], "label", "ana")
    assert store.history(session_id) == []
    # A label repeated in one answer is kept once, in the order given.
    given = store.answer(session_id, 1, 10, ["dog", "bark", "dog"], "label", "ana")
    assert given.labels == ("dog", "bark")


LABELS_VERBATIM = ["<img src=x onerror=alert(1)>", "Amsel 🐦 café", "鳥の声", "a;b,c \"q\" 'x' 2"]


def test_labels_are_stored_verbatim(open_store, clock):
    store = open_store(clock)
    session_id = _session(store)
    store.add_requests(session_id, [(1, 10)])
    store.answer(session_id, 1, 10, LABELS_VERBATIM, "mixed", "Zoë <b>")
    (stored,) = store.answers(session_id)
    assert list(stored.labels) == LABELS_VERBATIM
    assert stored.annotator == "Zoë <b>"
    assert store.export(session_id)["labels"].iloc[0] == LABELS_VERBATIM


def test_export(open_store, clock):
    store = open_store(clock)
    session_id = _session(store)
    store.add_requests(session_id, [(5, 50), (2, 20)])
    store.answer(session_id, 2, 20, ["dog"], "label", "oracle")
    frame = store.export(session_id)
    assert list(frame.columns) == [
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
    assert frame["cluster_id"].tolist() == [5, 2]
    assert frame["state"].tolist() == ["pending", "answered"]
    assert frame["labels"].tolist() == [None, ["dog"]]
    assert frame["annotator"].iloc[1] == "oracle"
    assert frame["kind"].iloc[1] == "label"
    assert frame["answered_at"].iloc[1] == datetime.fromtimestamp(1_000.0, UTC)
    # A pending request has no answer: its answer columns are missing values.
    assert frame.loc[0, ["kind", "annotator", "answered_at"]].isna().all()
    assert frame["session"].tolist() == ["s1", "s1"]


# ---------------------------------------------------------------------------------------------
# Claims


def test_two_claimants_get_different_requests(open_store, clock):
    store = open_store(clock)
    session_id = _session(store)
    store.add_requests(session_id, [(1, 10), (2, 20), (3, 30)])
    tab_a = store.claim_next(session_id, "tab-a", lease_s=60)
    tab_b = store.claim_next(session_id, "tab-b", lease_s=60)
    assert (tab_a.cluster_id, tab_b.cluster_id) == (1, 2)
    assert tab_a.claimed_by == "tab-a"
    assert tab_a.lease_expires == datetime.fromtimestamp(1_060.0, UTC)
    # Asking again (a reloaded tab) returns the cluster it holds, not a new one.
    assert store.claim_next(session_id, "tab-a", lease_s=60).cluster_id == 1
    assert store.claim_next(session_id, "tab-c", lease_s=60).cluster_id == 3
    assert store.claim_next(session_id, "tab-d", lease_s=60) is None
    # Answering releases the claim and the answered request is never handed out again.
    store.answer(session_id, 1, 10, ["dog"], "label", "ana")
    assert store.requests(session_id)[0].claimed_by is None
    assert store.claim_next(session_id, "tab-a", lease_s=60) is None


def test_an_expired_lease_is_reclaimable(open_store, clock):
    store = open_store(clock)
    session_id = _session(store)
    store.add_requests(session_id, [(1, 10)])
    assert store.claim_next(session_id, "tab-a", lease_s=30).cluster_id == 1
    clock.now += 29
    assert store.claim_next(session_id, "tab-b", lease_s=30) is None
    clock.now += 1
    reclaimed = store.claim_next(session_id, "tab-b", lease_s=30)
    assert (reclaimed.cluster_id, reclaimed.claimed_by) == (1, "tab-b")
    assert store.claim_next(session_id, "tab-a", lease_s=30) is None


def test_concurrent_claims_never_hand_out_a_request_twice(open_store, clock):
    setup = open_store(clock)
    session_id = _session(setup)
    setup.add_requests(session_id, [(c, c) for c in range(40)])
    claimed: dict[str, list[int]] = {}

    def claim_all(store: LabelStore, claimant: str) -> None:
        mine = claimed.setdefault(claimant, [])
        while (request := store.claim_next(session_id, claimant, lease_s=600)) is not None:
            mine.append(request.cluster_id)
            # Answer it so the claimant moves on (a held request would be handed back again).
            store.answer(
                session_id, request.cluster_id, request.window_index, ["x"], "label", claimant
            )

    # Two connections for SQLite (two stores of one file), a shared object in memory.
    second = open_store(clock) if isinstance(setup, SQLiteLabelStore) else setup
    threads = [
        threading.Thread(target=claim_all, args=(store, name))
        for store, name in [(setup, "a"), (second, "b"), (setup, "c")]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [c for clusters in claimed.values() for c in clusters]
    assert sorted(everything) == list(range(40))
    assert len(setup.history(session_id)) == 40


def test_concurrent_answers_are_all_kept(open_store, clock):
    setup = open_store(clock)
    session_id = _session(setup)
    setup.add_requests(session_id, [(c, 100 + c) for c in range(60)])
    second = open_store(clock) if isinstance(setup, SQLiteLabelStore) else setup

    def answer_every_other(store: LabelStore, start: int) -> None:
        for cluster in range(start, 60, 2):
            store.answer(session_id, cluster, 100 + cluster, [f"c{cluster}"], "label", f"p{start}")

    threads = [
        threading.Thread(target=answer_every_other, args=(store, start))
        for store, start in [(setup, 0), (second, 1)]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    answers = setup.answers(session_id)
    assert [(a.cluster_id, a.labels) for a in answers] == [(c, (f"c{c}",)) for c in range(60)]
    assert setup.progress(session_id) == (60, 60)


# ---------------------------------------------------------------------------------------------
# SQLite only: durability


def test_sqlite_keeps_everything_across_reopen(tmp_path, clock):
    path = tmp_path / "labels.sqlite"
    with SQLiteLabelStore(path, clock=clock) as store:
        session_id = _session(store)
        store.add_requests(session_id, [(1, 10), (2, 20), (3, 30)])
        store.answer(session_id, 1, 10, LABELS_VERBATIM, "label", "ana")
        store.answer(session_id, 2, 20, ["dog"], "label", "ana")
        store.answer(session_id, 2, 20, ["cat"], "label", "ben")
        store.answer(session_id, 3, 30, [], "skip", "ana")
        store.undo_last(session_id)
        store.claim_next(session_id, "tab-a", lease_s=60)
        before = (
            store.sessions(),
            store.requests(session_id),
            store.answers(session_id),
            store.history(session_id),
        )
    with SQLiteLabelStore(path, clock=clock) as reopened:
        after = (
            reopened.sessions(),
            reopened.requests(session_id),
            reopened.answers(session_id),
            reopened.history(session_id),
        )
    assert after == before
    assert [a.labels for a in after[2]] == [tuple(LABELS_VERBATIM), ("cat",)]
    assert after[1][2].claimed_by == "tab-a"  # the undone cluster 3 was claimed again
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_keeps_committed_answers_when_the_process_dies(tmp_path):
    path = tmp_path / "labels.sqlite"
    # The child answers three clusters, then dies without closing anything (no cleanup runs).
    child = textwrap.dedent(
        f"""
        import os
        from coincide.store.labels_sqlite import SQLiteLabelStore
        store = SQLiteLabelStore({str(path)!r})
        session_id = store.create_session("crash", "r", "s", "cluster", 0, {{}})
        store.add_requests(session_id, [(c, c) for c in range(5)])
        for cluster in range(3):
            store.answer(session_id, cluster, cluster, ["label %d" % cluster], "label", "ana")
        os._exit(3)
        """
    )
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert result.returncode == 3, result.stderr
    with SQLiteLabelStore(path) as store:
        session = store.get_session("crash")
        assert [(a.cluster_id, a.labels) for a in store.answers(session.id)] == [
            (0, ("label 0",)),
            (1, ("label 1",)),
            (2, ("label 2",)),
        ]
        assert store.progress(session.id) == (3, 5)


def test_sqlite_reports_a_bad_path(tmp_path: Path):
    with pytest.raises(UserError, match="does not exist"):
        SQLiteLabelStore(tmp_path / "missing" / "labels.sqlite")
    not_a_database = tmp_path / "notes.sqlite"
    not_a_database.write_text("these are not labels\n" * 100)
    with pytest.raises(UserError, match="not a readable label store"):
        SQLiteLabelStore(not_a_database)
