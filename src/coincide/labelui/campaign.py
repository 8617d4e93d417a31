"""The labeling campaign the page serves: one session of the label store, over one feature
store's clustering. Every read and write of labels goes through the label store; this class
only adds what the page needs on top (cluster sizes, members, media lookups, tab claims).

- The page serves the session's first `budget` requests, in their order.
- A browser tab is a claimant: it asks for the next cluster with `claim`, which leases it the
  first pending request nobody else holds (`LabelStore.claim_next`), so two tabs never get the
  same cluster; a tab asking again gets the cluster it holds back.
- An answer is refused (`Conflict`) for a cluster already answered or leased to another tab.
- "Windows labeled" counts the windows of the clusters whose current answer is of kind `label`:
  the windows that answer propagates its labels to.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from coincide.errors import UserError
from coincide.labelui.clips import ClipSpan, clip_span
from coincide.store.features import FeatureStore
from coincide.store.labels import (
    Answer,
    AnswerConflict,
    AnswerKind,
    LabelStore,
    Request,
    Session,
)


class NotFound(Exception):
    """A cluster or window that this campaign does not serve."""


class Conflict(Exception):
    """An answer that would answer a cluster twice, or one held by another tab."""


class MediaUnavailable(Exception):
    """The media file of a window is gone (`gone`), or no longer the file that was ingested."""

    def __init__(self, message: str, gone: bool = False) -> None:
        super().__init__(message)
        self.gone = gone


@dataclass(frozen=True)
class Progress:
    """answered: served requests with an answer; budget: requests served; windows_labeled:
    windows that the current `label` answers propagate to (sum of their cluster sizes)."""

    answered: int
    budget: int
    windows_labeled: int


@dataclass(frozen=True)
class Member:
    """One window shown for a cluster, with where it comes from and the clip played for it."""

    window: int
    cluster_id: int
    media_id: str
    media_name: str
    time_s: float
    has_frame: bool
    span: ClipSpan


# ---------------------------------------------------------------------------------------------
# Finding the session and the clustering


def find_session(labels: LabelStore, name: str | None) -> Session:
    """The session called `name`; with no name, the store's only session. UserError otherwise."""
    sessions = labels.sessions()
    if name is not None:
        session = labels.get_session(name)
        if session is None:
            known = ", ".join(s.name for s in sessions) or "none"
            raise UserError(
                f"labeling session {name!r} does not exist (sessions: {known}); select clusters "
                "for it with `coincide label RUN --store STORE --budget N` first."
            )
        return session
    if len(sessions) == 1:
        return sessions[0]
    if not sessions:
        raise UserError(
            "the label store holds no labeling session; select clusters with "
            "`coincide label RUN --store STORE --budget N` first."
        )
    names = ", ".join(s.name for s in sessions)
    raise UserError(f"the label store holds several sessions ({names}); pass --session NAME.")


def session_assignment(run_dir: Path, store: FeatureStore, session: Session) -> np.ndarray:
    """`(windows,)` int64 cluster of every window, as the session's requests mean it.

    A cluster session reads the clustering it was selected from (`coincide cluster`'s output
    named by the session's `clustering` parameter) and checks that it has not changed since; a
    random-labeling session asks single windows, each its own cluster (id = window index).
    UserError when the clustering is missing, stale or changed.
    """
    if session.strategy in ("random", "search"):
        return np.arange(len(store), dtype=np.int64)
    from coincide.labeling.clusters import ClusteringKey, load_clustering
    from coincide.labeling.sessions import assignment_fingerprint

    name = str(session.params.get("clustering", "head"))
    try:
        key = ClusteringKey.parse(name)
    except UserError as err:
        raise UserError(
            f"session {session.name!r} names an unknown clustering {name!r}; "
            "use a session made by `coincide label`."
        ) from err
    clustering = load_clustering(run_dir, store.root, key)
    assignment = np.asarray(clustering.assignment, dtype=np.int64)
    if len(assignment) != len(store):
        raise UserError(
            f"the clustering in {clustering.folder} covers {len(assignment)} windows but the "
            f"store has {len(store)}; run `coincide cluster` again."
        )
    expected = session.params.get("assignment")
    if expected is not None and expected != assignment_fingerprint(assignment):
        raise UserError(
            f"the clustering in {clustering.folder} changed since session {session.name!r} "
            "began; label it in a new session (--session NAME)."
        )
    return assignment


# ---------------------------------------------------------------------------------------------
# The campaign


class Campaign:
    """The page's view of one labeling session (see the module docstring).

    Args:
        labels: the label store holding the session (the only place labels are written).
        session: the session to serve.
        store: the feature store the session's windows index.
        assignment: `(windows,)` int64 cluster of every window.
        budget: how many of the session's requests to serve (all when None).
        context_s: seconds of audio played before and after the window.
        lease_s: how long a tab keeps a cluster without asking again.
    """

    def __init__(
        self,
        labels: LabelStore,
        session: Session,
        store: FeatureStore,
        assignment: np.ndarray,
        budget: int | None = None,
        context_s: float = 2.0,
        lease_s: float = 300.0,
        seed: int | None = None,
    ) -> None:
        self.labels = labels
        self.session = session
        self.store = store
        self.context_s = float(context_s)
        self.lease_s = float(lease_s)
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(seed)

        requests = labels.requests(session.id)
        if budget is not None and budget > len(requests):
            raise UserError(
                f"session {session.name!r} has {len(requests)} clusters selected, fewer than the "
                f"budget {budget}; run `coincide label` with --budget {budget} to select more."
            )
        if not requests:
            raise UserError(
                f"session {session.name!r} has no clusters to label; select some with "
                "`coincide label RUN --store STORE --budget N`."
            )
        served = requests if budget is None else requests[:budget]
        self.budget = len(served)
        self._served: dict[int, Request] = {r.cluster_id: r for r in served}

        # Members of every cluster, grouped once: a cluster's windows are one slice of `_order`.
        self.assignment = np.asarray(assignment, dtype=np.int64)
        self._order = np.argsort(self.assignment, kind="stable")
        self._sorted = self.assignment[self._order]
        self.cluster_sizes = np.bincount(self.assignment, minlength=1)

        index = store.index
        self._media_ids = index["media_id"].to_numpy()
        self._times = index["time_s"].to_numpy(dtype=np.float64)
        self._has_frame = index["has_frame"].to_numpy(dtype=bool)
        media = store.media.set_index("media_id")
        self._media: dict[str, dict[str, Any]] = media.to_dict(orient="index")

    # -- lookups -----------------------------------------------------------------------------

    def cluster_size(self, cluster_id: int) -> int:
        if cluster_id < 0:
            return 1  # a check request (`coincide.labeling.select.check_id`) asks about one window
        return (
            int(self.cluster_sizes[cluster_id]) if 0 <= cluster_id < len(self.cluster_sizes) else 0
        )

    def members(self, cluster_id: int) -> np.ndarray:
        """`(size,)` int64 windows of a cluster, ascending (the argsort is stable)."""
        lo, hi = np.searchsorted(self._sorted, [cluster_id, cluster_id + 1])
        return self._order[lo:hi]

    def check_window(self, window: int) -> None:
        """Raise NotFound unless `window` is a window of one of the served clusters: media are
        served for those only."""
        if not 0 <= window < len(self.assignment):
            raise NotFound(f"window {window} is not in the store")
        if int(self.assignment[window]) not in self._served:
            raise NotFound(f"window {window} is not in a cluster of this labeling session")

    def media_record(self, window: int) -> dict[str, Any]:
        """The store's row for the media file of `window`: media_path, duration_s, size, ..."""
        return self._media[str(self._media_ids[window])]

    def media_file(self, member: Member) -> Path:
        """The ingested media file of a member, checked to be the very file that was ingested
        (same size and modification time, not reached through a link); MediaUnavailable
        otherwise."""
        record = self.media_record(member.window)
        path = Path(str(record["media_path"]))
        name = member.media_name
        # Ingest stores resolved absolute paths: anything else, or a link swapped in, is refused.
        if not path.is_absolute() or os.path.realpath(path) != str(path):
            raise MediaUnavailable(
                f"media file {name} is now reached through a link; ingest it again."
            )
        try:
            stat = os.stat(path)
        except FileNotFoundError as err:
            raise MediaUnavailable(
                f"media file {name} is gone from where it was ingested.", gone=True
            ) from err
        except OSError as err:
            raise MediaUnavailable(f"media file {name} cannot be read ({err.strerror}).") from err
        if (stat.st_size, stat.st_mtime_ns) != (int(record["size"]), int(record["mtime_ns"])):
            raise MediaUnavailable(
                f"media file {name} changed since it was ingested; ingest it again."
            )
        return path

    def member(self, window: int, check: bool = True) -> Member:
        """What the page shows for `window`; with `check`, NotFound unless it is a window of a
        served cluster (without, e.g. to describe an answer given in a larger campaign)."""
        if check:
            self.check_window(window)
        record = self.media_record(window)
        time_s = float(self._times[window])
        return Member(
            window=window,
            cluster_id=int(self.assignment[window]),
            media_id=str(self._media_ids[window]),
            media_name=Path(str(record["media_path"])).name,
            time_s=time_s,
            has_frame=bool(self._has_frame[window]),
            span=clip_span(time_s, float(record["duration_s"]), self.context_s),
        )

    def neighbours(self, window: int, span: ClipSpan) -> list[int]:
        """Windows of the same media file that start inside `span` (ascending time). A media
        file's windows are consecutive in the store, one per second, so they are found next to
        `window` and checked by media and time."""
        media_id, time_s = self._media_ids[window], self._times[window]
        found = []
        first = int(np.floor(span.start_s - time_s))
        for offset in range(first, int(np.ceil(span.end_s - time_s)) + 1):
            other = window + offset
            if not 0 <= other < len(self._times) or self._media_ids[other] != media_id:
                continue
            t = self._times[other]
            if t == time_s + offset and span.start_s <= t < span.end_s:
                found.append(other)
        return found

    def has_frame(self, window: int) -> bool:
        return bool(self._has_frame[window])

    def window_times(self, windows: Sequence[int]) -> np.ndarray:
        return self._times[np.asarray(windows, dtype=np.int64)]

    def random_member(self, cluster_id: int, exclude: int | None = None) -> int:
        """A random window of a served cluster, other than `exclude` when the cluster has more."""
        if cluster_id not in self._served:
            raise NotFound(f"cluster {cluster_id} is not in this labeling session")
        members = self.members(cluster_id)
        if exclude is not None and len(members) > 1:
            members = members[members != exclude]
        with self._lock:
            return int(members[self._rng.integers(len(members))])

    # -- progress ----------------------------------------------------------------------------

    def current_answers(self) -> list[Answer]:
        """Current answers to the served requests, in request order."""
        return [a for a in self.labels.answers(self.session.id) if a.cluster_id in self._served]

    def label_counts(self) -> Counter[str]:
        """How many current answers of the session (served or not) carry each label, as typed."""
        return Counter(label for a in self.labels.answers(self.session.id) for label in a.labels)

    def progress(self) -> Progress:
        answers = self.current_answers()
        labeled = sum(self.cluster_size(a.cluster_id) for a in answers if a.kind == "label")
        return Progress(answered=len(answers), budget=self.budget, windows_labeled=labeled)

    # -- claims ------------------------------------------------------------------------------

    def _release(self, claimant: str) -> None:
        # The store renews a claimant's lease when it asks again; renewing for 0 seconds ends
        # it, which frees the cluster the claimant holds for whoever asks next.
        self.labels.claim_next(self.session.id, claimant, 0.0)

    def claim(self, claimant: str) -> Request | None:
        """Lease the next cluster to a tab (its held one if any); None when every served
        cluster is answered or held by other tabs."""
        request = self.labels.claim_next(self.session.id, claimant, self.lease_s)
        if request is None:
            return None
        if request.cluster_id not in self._served:
            # Requests past the budget belong to a larger campaign; do not keep one leased.
            self._release(claimant)
            return None
        return request

    def release_stale_claims(self) -> int:
        """End the leases of tabs from before this server started (their pages reload and ask
        again), so that a restarted page resumes at the first unanswered cluster. Returns how
        many leases were ended."""
        ended = 0
        for _ in range(len(self._served) + 1):
            now = datetime.fromtimestamp(time.time(), UTC)
            held = [
                r
                for r in self.labels.pending(self.session.id)
                if r.claimed_by is not None
                and r.lease_expires is not None
                and r.lease_expires > now
            ]
            if not held:
                break
            self._release(held[0].claimed_by)
            ended += 1
        return ended

    # -- answers -----------------------------------------------------------------------------

    def request_of(self, cluster_id: int) -> Request:
        """The served request for a cluster, in its current state."""
        if cluster_id not in self._served:
            raise NotFound(f"cluster {cluster_id} is not in this labeling session")
        current = next(
            (r for r in self.labels.requests(self.session.id) if r.cluster_id == cluster_id), None
        )
        if current is None:
            raise NotFound(f"cluster {cluster_id} is no longer requested in this session")
        return current

    def answer(
        self,
        claimant: str,
        cluster_id: int,
        window: int,
        kind: AnswerKind,
        labels: Sequence[str],
        annotator: str,
        owner: str | None = None,
    ) -> Answer:
        """Record an answer through the label store (committed when this returns). `owner` is
        the page's private key (the claimant when None): only it can undo the answer."""
        with self._lock:
            request = self.request_of(cluster_id)
            if request.window_index != window:
                raise Conflict(
                    f"cluster {cluster_id} is shown through window {request.window_index}, "
                    f"not {window}; reload the page."
                )
            # The label store checks the claim and inserts in one transaction: another server
            # on the same label store may have answered or claimed the cluster meanwhile.
            try:
                return self.labels.answer(
                    self.session.id,
                    cluster_id,
                    window,
                    list(labels),
                    kind,
                    annotator,
                    claimant,
                    owner=owner or claimant,
                )
            except AnswerConflict as err:
                raise Conflict(str(err)) from err

    def undo(self, claimant: str, annotator: str, owner: str | None = None) -> Answer | None:
        """Take back `annotator`'s latest answer in the session that was given with `owner`'s
        key (the claimant's when None): a page can undo only its own answers, not those of
        another person who typed the same name. The tab's held cluster is released so that its
        next `claim` gets the reopened cluster (the earliest pending)."""
        with self._lock:
            undone = self.labels.undo_last(self.session.id, annotator, owner=owner or claimant)
            if undone is not None:
                self._release(claimant)
            return undone
