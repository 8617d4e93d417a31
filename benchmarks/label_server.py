"""Load on the labeling page: answers per second from N concurrent clients on loopback.

    python benchmarks/label_server.py [--clients 1,8,32] [--clusters 400] [--seconds 10]

Builds a synthetic feature store (random log-mel windows, no media files are needed for the
API), a clustering with `--clusters` clusters and a labeling session asking all of them, then
serves the real page (uvicorn, `LabelingServer.start()`) on a free loopback port. Each client
is a thread with its own HTTP connection that claims a cluster (/api/next) and answers it
(/api/answer) until the session is done or `--seconds` pass. Printed per client count:
answers per second, claim+answer latency (median, 95th percentile), and the check that
matters: every acknowledged answer is in the label store afterwards, no cluster answered
twice. The reference is the one-client rate measured in the same run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from coincide.labeling.clusters import store_clusters_dir, write_clustering
from coincide.labelui.server import LabelingServer
from coincide.store.labels_sqlite import SQLiteLabelStore
from coincide.store.writer import MediaRecord, StoreWriter

FRONTEND = {"n_mels": 64, "window_frames": 96, "frame_size": 128}


def build(root: Path, clusters: int) -> tuple[Path, Path]:
    """A store of `clusters` media of 3 windows each, one cluster per media, and a session."""
    rng = np.random.default_rng(0)
    store = root / "store"
    with StoreWriter(store, FRONTEND) as writer:
        for m in range(clusters):
            writer.add(
                MediaRecord(
                    media_id=f"{m:040x}",
                    media_path=str(root / f"m{m}.wav"),
                    size=1,
                    mtime_ns=m,
                    duration_s=3.0,
                    logmel=rng.normal(0, 1, (3, 64, 96)).astype(np.float32),
                    frames=None,
                    has_frame=np.zeros(3, bool),
                    time_s=np.arange(3, dtype=np.float64),
                )
            )
    run = root / "run"
    assignment = np.repeat(np.arange(clusters), 3)
    write_clustering(store_clusters_dir(run, store), assignment, clusters, {"clustering": "head"})
    with SQLiteLabelStore(run / "labels.sqlite") as labels:
        session = labels.create_session(
            "load", str(run), str(store.resolve()), "cluster", 0, {"clustering": "head"}
        )
        labels.add_requests(session, [(c, 3 * c) for c in range(clusters)])
    return run, store


def post(connection: http.client.HTTPConnection, path: str, payload: dict) -> tuple[int, dict]:
    body = json.dumps(payload)
    connection.request("POST", path, body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def load(port: int, clients: int, seconds: float) -> tuple[list[float], list[int], int]:
    """(latencies of acknowledged answers, their cluster ids, refused answers)."""
    latencies: list[float] = []
    answered: list[int] = []
    refused = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(k: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.connect()
        # http.client sends headers and body in two writes: without TCP_NODELAY, Nagle's
        # algorithm and the server's delayed ACK add ~40 ms to every request (browsers set it).
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        claimant = f"tab-{k}"
        while time.monotonic() < deadline:
            started = time.perf_counter()
            _, claimed = post(connection, "/api/next", {"claimant": claimant})
            request = claimed.get("request")
            if request is None:
                break
            status, _ = post(
                connection,
                "/api/answer",
                {
                    "claimant": claimant,
                    "cluster_id": request["cluster_id"],
                    "window": request["window"],
                    "kind": "label",
                    "labels": [f"class{k % 5}"],
                    "annotator": f"annotator{k}",
                },
            )
            with lock:
                if status == 200:
                    latencies.append(time.perf_counter() - started)
                    answered.append(request["cluster_id"])
                else:
                    refused[0] += 1
        connection.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, answered, refused[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--clusters", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    print("| clients | answers | answers/s | vs 1 client | median ms | p95 ms | lost | twice |")
    print("|---|---|---|---|---|---|---|---|")
    reference = None
    for clients in counts:
        with tempfile.TemporaryDirectory() as tmp:
            run, store = build(Path(tmp), args.clusters)
            page = LabelingServer(run, store, host="127.0.0.1", port=0, session="load")
            page.start()
            started = time.perf_counter()
            latencies, answered, _refused = load(page.port, clients, args.seconds)
            elapsed = time.perf_counter() - started
            page.stop()
            with SQLiteLabelStore(run / "labels.sqlite") as labels:
                session = labels.get_session("load")
                stored = [a.cluster_id for a in labels.history(session.id)]
            lost = len(set(answered) - set(stored))
            twice = len(stored) - len(set(stored))
            rate = len(answered) / elapsed
            reference = reference or rate
            p95 = float(np.percentile(latencies, 95)) * 1000 if latencies else float("nan")
            median = statistics.median(latencies) * 1000 if latencies else float("nan")
            print(
                f"| {clients} | {len(answered)} | {rate:.0f} | {rate / reference:.2f}x | "
                f"{median:.1f} | {p95:.1f} | {lost} | {twice} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
