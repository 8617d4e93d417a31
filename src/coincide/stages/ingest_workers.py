"""The decoding half of `coincide ingest`: hash a file, decode it block by block into a sink.

With one worker, files are decoded in the ingesting process straight into the store writer's open
chunk (`StoreWriter.media`). With several, each worker process decodes whole files into spool
folders inside the store (`chunk_files.Spool`) and the ingesting process appends them to its chunk
in input order (`StoreWriter.add_spooled`), so a run's chunks do not depend on the number of
workers. Either way no process holds a file's features whole: memory is bounded by the decoder's
block (`iter_features`), not by the file's length.

A file's content hash is taken before decoding and checked again after it (with its size and
mtime), so a file that changed while it was read is skipped, never stored under a stale hash; a
file that turns out bad half-way (a NaN, a decoder error, a change) is cut back out of its sink
before anything of it is committed.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import shutil
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from coincide.errors import MediaError
from coincide.store.chunk_files import BlockSink, MediaSource, Spool, SpooledMedia
from coincide.store.layout import TEMP_PREFIX
from coincide.store.media_id import media_id_of
from coincide.store.writer import StoreWriter

# Files in flight per worker: enough to keep every worker busy while the main process appends
# spools, few enough to bound the spools on disk to a handful of files.
IN_FLIGHT_PER_WORKER = 2
# Windows decoded at a time: with a frame each, 256 windows are 19 MB, what a process holds of a
# file of any length.
BLOCK_WINDOWS = 256


@dataclass
class Decoded:
    """A file whose features were written to its sink: into the store writer's open chunk
    (spooled None), or into a spool for the writer to append."""

    path: str
    media_id: str
    n_windows: int
    warnings: tuple[str, ...]
    spooled: SpooledMedia | None = None


@dataclass
class AlreadyStored:
    """A file whose content hash is already in the store (found before decoding)."""

    path: str
    media_id: str


@dataclass
class Skipped:
    path: str
    reason: str


Outcome = Decoded | AlreadyStored | Skipped


# -- worker processes ------------------------------------------------------------------------

_known_ids: frozenset[str] = frozenset()
_spool_root: Path | None = None
_frontend: dict[str, Any] = {}
_spool_numbers = itertools.count()


def _init_worker(
    known_ids: frozenset[str],
    parent: int | None = None,
    spool_root: Path | None = None,
    frontend: dict[str, Any] | None = None,
) -> None:
    """Worker setup: the stored media ids (to skip before decoding), where to spool files and
    the store's shapes, one torch thread (the parallelism comes from the processes) and, given
    the ingesting process's pid, a watchdog that ends this worker when that process is gone."""
    global _known_ids, _spool_root, _frontend
    _known_ids, _spool_root, _frontend = known_ids, spool_root, dict(frontend or {})
    import torch

    torch.set_num_threads(1)
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _spool(source: MediaSource) -> Spool:
    """A new spool folder for one file, named by this worker's pid and a counter."""
    if _spool_root is None:
        raise RuntimeError("this process was not set up as an ingest worker")
    folder = _spool_root / f"{os.getpid()}-{next(_spool_numbers)}"
    return Spool(folder, _frontend, source)


def _alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user (a reused pid): treat as alive
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(pid, 0) has answered


def _exit_with(parent: int, every_s: float = 1.0) -> None:
    """Poll the ingesting process; exit when it is gone. Workers are children of the
    forkserver, not of the ingesting process, so nothing else ends them after a kill -9
    (each holds a decoder and torch, 0.5-1 GB)."""
    while _alive(parent):
        time.sleep(every_s)
    os._exit(1)


# -- one file --------------------------------------------------------------------------------


def _identity(file_stat: os.stat_result) -> tuple[int, int, int, int]:
    return (file_stat.st_dev, file_stat.st_ino, file_stat.st_size, file_stat.st_mtime_ns)


def _first_non_finite(logmel: np.ndarray) -> int | None:
    """The first window holding a NaN or an infinity (a float WAV can carry them), or None."""
    finite = np.isfinite(logmel.reshape(len(logmel), -1)).all(axis=1)
    return None if finite.all() else int(np.flatnonzero(~finite)[0])


def examine(
    path: str,
    is_known: Callable[[str], bool] | None = None,
    open_sink: Callable[[MediaSource], BlockSink] | None = None,
) -> Outcome:
    """Hash one file and, unless `is_known` says its content is stored, decode its features
    block by block into the sink `open_sink` gives (by default, in a worker: the stored ids it
    was given and a spool). Nothing of the file stays in the sink unless the outcome is
    `Decoded`; an error writing the sink (a full disk) is raised, not taken for a bad file."""
    is_known = _known_ids.__contains__ if is_known is None else is_known
    open_sink = _spool if open_sink is None else open_sink
    try:
        file_stat = os.stat(path)
        if not stat.S_ISREG(file_stat.st_mode):
            return Skipped(path, "not a regular file")
        if file_stat.st_size == 0:
            return Skipped(path, "empty file")
        media_id = media_id_of(Path(path))
    except OSError as err:
        return Skipped(path, f"cannot read: {err.strerror or err}")
    if is_known(media_id):
        return AlreadyStored(path, media_id)
    sink = open_sink(MediaSource(media_id, path, file_stat.st_size, file_stat.st_mtime_ns))
    try:
        decoded = _decode_into(sink, path, file_stat, media_id)
    except BaseException:
        sink.discard()
        raise
    if isinstance(decoded, Skipped):
        sink.discard()
        return decoded
    n_windows, duration_s, warnings = decoded
    spooled = sink.finish(duration_s)
    return Decoded(path, media_id, n_windows, warnings, spooled)


def _decode_into(
    sink: BlockSink, path: str, file_stat: os.stat_result, media_id: str
) -> Skipped | tuple[int, float, tuple[str, ...]]:
    """Write the windows of `path` to `sink`; (windows, duration, warnings) or why to skip it."""
    from coincide.media import decode

    n_windows, last = 0, None
    with closing(decode.iter_features(Path(path), BLOCK_WINDOWS, log_warnings=False)) as blocks:
        while True:
            try:
                block = next(blocks, None)
            except MediaError as err:
                return Skipped(path, str(err))
            except (av.error.FFmpegError, OSError) as err:
                # The decoder wraps the failures it knows in MediaError; one it did not foresee
                # on one odd file must not stop a long run over thousands: skip that file.
                return Skipped(path, f"decoder error: {err}")
            if block is None:
                break
            bad = _first_non_finite(block.logmel)
            if bad is not None:
                return Skipped(
                    path,
                    "its audio decodes to non-finite values (NaN or inf) at "
                    f"{block.time_s[bad]:.2f} s",
                )
            sink.write(block.logmel, block.frames, block.has_frame, block.time_s)
            n_windows, last = n_windows + len(block), block
    if last is None or n_windows == 0:
        return Skipped(path, "no audio window decoded")
    # Hash and features must come from the same bytes: a file being copied, re-encoded or
    # truncated while it was read would be stored under the hash of content it no longer has,
    # and the finished file refused later as a duplicate. Re-check it after decoding.
    try:
        changed = _identity(os.stat(path)) != _identity(file_stat) or media_id_of(Path(path)) != (
            media_id
        )
    except OSError:
        changed = True
    if changed:
        return Skipped(path, "changed while it was read; run ingest again once it is complete")
    return n_windows, last.duration_s, last.warnings


# -- many files ------------------------------------------------------------------------------


def outcomes(
    paths: list[str], known_ids: frozenset[str], workers: int, writer: StoreWriter
) -> Iterator[Outcome]:
    """`examine` over `paths`, in order. With one worker, in this process, into `writer`; with
    more, at most IN_FLIGHT_PER_WORKER x workers files in flight, spooled in the store."""
    if workers == 1:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in the workers: ingestion speed is measured per core
        try:
            for path in paths:
                yield examine(path, writer.has_media, writer.media)
        finally:
            torch.set_num_threads(threads)
        return
    # forkserver: workers fork from a clean server that imported the decoder once, instead of
    # from this process (fork after threads started is unsafe) or from scratch (spawn is slow).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["coincide.media.decode"])
    # Spools live in the store (the same file system as the chunks, not a RAM-backed /tmp); a
    # killed run's are removed by the next writer with the rest of its temp files.
    spool_root = writer.root / f"{TEMP_PREFIX}spool-{os.getpid()}"
    spool_root.mkdir()
    initargs = (known_ids, os.getpid(), spool_root, writer.frontend)
    try:
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker, initargs=initargs
        ) as pool:
            pending: deque[Future[Outcome]] = deque()
            queue = iter(paths)
            try:
                for path in queue:
                    pending.append(pool.submit(examine, path))
                    if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                        break
                while pending:
                    outcome = pending.popleft().result()
                    next_path = next(queue, None)
                    if next_path is not None:
                        pending.append(pool.submit(examine, next_path))
                    yield outcome
            finally:
                for future in pending:
                    future.cancel()
    finally:
        shutil.rmtree(spool_root, ignore_errors=True)
