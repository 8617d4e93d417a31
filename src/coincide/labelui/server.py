"""Run the labeling page: `coincide label RUN --store STORE --budget N --serve`.

The session and its requests must exist already (`coincide label` selects the clusters, then
calls `serve`); the page answers them through the label store, so stopping the server, or
killing it, loses nothing, and starting it again resumes at the first unanswered cluster.

Binding to a loopback address (the default 127.0.0.1) needs no token, but only Host headers
naming the loopback are served. Binding to any other address generates a token, printed with the
page's address; every request must carry it.
"""

from __future__ import annotations

import ipaddress
import secrets
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from coincide.errors import UserError
from coincide.labelui.app import create_app
from coincide.labelui.campaign import Campaign, find_session, session_assignment
from coincide.labelui.vocab import load_vocabulary
from coincide.store.features import open_store
from coincide.store.labels import label_store_path
from coincide.store.labels_sqlite import SQLiteLabelStore

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8750
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class Opened:
    """A campaign with the label store it writes through (close the store when done)."""

    campaign: Campaign
    labels: SQLiteLabelStore


def open_campaign(
    run_dir: str | Path,
    store_path: str | Path,
    budget: int | None = None,
    session: str | None = None,
    db_path: str | Path | None = None,
    context_s: float = 2.0,
    lease_s: float = 300.0,
) -> Opened:
    """Open the label store, the session, the feature store and its cluster assignment."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist; give the RUN of `coincide train`.")
    db = label_store_path(run_dir, db_path)
    if not db.is_file():
        raise UserError(
            f"no label store at {db}; select clusters with `coincide label {run_dir} --store "
            f"{store_path} --budget N` first."
        )
    store = open_store(store_path)
    labels = SQLiteLabelStore(db)
    try:
        chosen = find_session(labels, session)
        assignment = session_assignment(run_dir, store, chosen)
        campaign = Campaign(
            labels, chosen, store, assignment, budget=budget, context_s=context_s, lease_s=lease_s
        )
    except BaseException:
        labels.close()
        raise
    return Opened(campaign, labels)


def _listening_socket(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0][0]
        # proto IPPROTO_TCP, not 0: asyncio turns on TCP_NODELAY only for sockets that say so,
        # and without it every response waits ~40 ms for the client's delayed ACK (Nagle).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except OSError as err:
        raise UserError(f"cannot listen on host {host!r} ({err}); pass another --host.") from err
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError as err:
        sock.close()
        raise UserError(
            f"cannot listen on {host}:{port} ({err.strerror}); pass another --port or --host."
        ) from err
    return sock


def _page_address(host: str, port: int, token: str | None) -> str:
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "[::]") else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


class LabelingServer:
    """The labeling page listening on a socket. `run()` serves until Ctrl+C (the command line);
    `start()` serves from a background thread and `stop()` ends it (a notebook, tests).

    With `port=0` the system picks a free port (`port` then holds it). `url` is the page's
    address, with the token when there is one.

    Args:
        run_dir: the run whose clustering is labeled (`RUN/clusters/<store>/assignment.npy`).
        store_path: the feature store the clustering covers.
        budget: serve the session's first `budget` requests (all of them when None).
        host, port: where to listen; a non-loopback host gets a generated token.
        vocab: vocabulary for the autocomplete (plain text list or AudioSet ontology.json).
        session: the labeling session's name (the label store's only session when None).
        db_path: the label store (default `RUN/labels.sqlite`).
        annotator: default name in the page's annotator field.
        context_s: seconds of audio played before and after the window.
        lease_s: seconds a browser tab keeps its cluster without asking again.
    """

    def __init__(
        self,
        run_dir: str | Path,
        store_path: str | Path,
        budget: int | None = None,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        vocab: str | Path | None = None,
        session: str | None = None,
        db_path: str | Path | None = None,
        *,
        annotator: str | None = None,
        context_s: float = 2.0,
        lease_s: float = 300.0,
    ) -> None:
        vocabulary = load_vocabulary(vocab)
        opened = open_campaign(run_dir, store_path, budget, session, db_path, context_s, lease_s)
        self.campaign, self.labels = opened.campaign, opened.labels
        try:
            loopback = is_loopback(host)
            self.token = None if loopback else secrets.token_urlsafe(24)
            self.app = create_app(
                self.campaign,
                vocabulary,
                token=self.token,
                allowed_hosts=LOOPBACK_NAMES if loopback else None,
                annotator=annotator,
            )
            self._socket = _listening_socket(host, port)
        except BaseException:
            self.labels.close()
            raise
        self.port = int(self._socket.getsockname()[1])
        self.url = _page_address(host, self.port, self.token)
        # Tabs of an earlier server reload and ask again; their leases would only hide clusters.
        self.campaign.release_stale_claims()
        import uvicorn

        # No access log: request lines carry the token in their query string.
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, proxy_headers=False, lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        """Serve until Ctrl+C, SIGTERM or SIGHUP; `close()` then releases the label store.

        Each of them ends the page the same way, so that the caller (`coincide label`) goes on
        to write the propagated labels: a closed terminal (SIGHUP) or a service manager or
        container stop (SIGTERM) used to kill the process before it did.
        """
        stopping = (signal.SIGTERM, signal.SIGHUP)

        def stop(signum: int, frame: FrameType | None) -> None:
            self._server.should_exit = True

        # uvicorn handles SIGINT and SIGTERM itself while it runs, then re-raises the signal
        # to the handler that was there before: ours, which only asks it to stop.
        previous = (
            {sig: signal.signal(sig, stop) for sig in stopping}
            if threading.current_thread() is threading.main_thread()
            else {}
        )
        try:
            self._server.run(sockets=[self._socket])
        except KeyboardInterrupt:
            # Ctrl+C: uvicorn shut down cleanly, then re-raised the signal.
            return
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def start(self, timeout_s: float = 30.0) -> None:
        """Serve from a background thread; returns once the page accepts connections."""
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the labeling page did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        """End a server started with `start()` and release the label store."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join()
        self.close()

    def close(self) -> None:
        self._socket.close()
        self.labels.close()


def serve(page: LabelingServer) -> None:
    """Serve the labeling page until Ctrl+C (see the module docstring), saying where and how
    far the session is; the page is closed after."""
    campaign = page.campaign
    progress = campaign.progress()
    print(
        f"labeling session '{campaign.session.name}': {progress.answered} of "
        f"{progress.budget} clusters answered",
        flush=True,
    )
    print(f"open {page.url}", flush=True)
    if page.token:
        print(
            "every request must carry the token above (it is in the address); share it only "
            "with your annotators.",
            flush=True,
        )
    print("press Ctrl+C to stop; every answer is saved as it is given.", flush=True)
    try:
        page.run()
        progress = campaign.progress()
        print(
            f"stopped; {progress.answered} of {progress.budget} clusters answered, all saved in "
            f"{page.labels.path}.",
            file=sys.stderr,
            flush=True,
        )
    finally:
        page.close()
