"""Append media files to a feature store in chunks that appear atomically.

A chunk is written into a temporary folder and renamed into place: the rename is the commit, so
a process killed at any moment leaves either a complete chunk or a temp folder that the next
writer deletes. One writer at a time is enforced with a `filelock` lock on `STORE/.lock` (an
OS lock, flock on POSIX: released by the kernel when the process dies, so a killed run never
leaves the store locked).

A media file is written into the open chunk's files block by block as it is decoded
(`StoreWriter.media`, `chunk_files`), so memory holds one block, not a file or a chunk. It belongs
to the chunk only once its writer calls `finish`; until then `discard` (or an exception, which
deletes the whole uncommitted chunk) cuts its rows back out, so a file found bad half-way leaves
nothing. A decoding worker process spools a file to disk instead (`chunk_files.Spool`), and the
writer appends the spool when it takes the file (`add_spooled`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout

from coincide.errors import UserError
from coincide.files import write_json_atomic
from coincide.store.chunk_files import (
    SPOOL_FRAMES,
    SPOOL_LOGMEL,
    BlockSink,
    MediaSource,
    OpenChunk,
    SpooledMedia,
    WindowLog,
)
from coincide.store.layout import (
    CHUNKS_DIR,
    HEADER_FILE,
    LOCK_FILE,
    MEDIA_FILE,
    TEMP_PREFIX,
    chunk_name,
    committed_chunk_ids,
    new_header,
    read_header,
)

# Frontend parameters a store header must carry: they fix the shapes of the stored arrays.
SHAPE_KEYS = ("n_mels", "window_frames", "frame_size")
DEFAULT_CHUNK_WINDOWS = 4096


@dataclass
class MediaRecord:
    """The features of one media file, ready to be stored.

    logmel: (n, mel, frames) float32; frames: (n, height, width, 3) uint8 or None when the
    file has no video; has_frame: (n,) bool; time_s: (n,) float64, window starts in seconds.
    """

    media_id: str
    media_path: str
    size: int
    mtime_ns: int
    duration_s: float
    logmel: np.ndarray
    frames: np.ndarray | None
    has_frame: np.ndarray
    time_s: np.ndarray

    @property
    def n_windows(self) -> int:
        return int(self.logmel.shape[0])


@contextmanager
def store_lock(root: Path) -> Iterator[None]:
    """Hold the store's write lock; a second writer gets a UserError instead of waiting."""
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(root / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout as err:
        raise UserError(
            f"another coincide process is writing to {root}; wait for it to finish, "
            "then run this command again."
        ) from err
    try:
        yield
    finally:
        lock.release()


def read_stored_media(root: Path) -> pd.DataFrame:
    """One row per media file in the committed chunks (columns of `media.parquet` + `chunk`)."""
    tables = []
    for chunk_id in committed_chunk_ids(root):
        table = pd.read_parquet(root / CHUNKS_DIR / chunk_name(chunk_id) / MEDIA_FILE)
        table["chunk"] = chunk_id
        tables.append(table)
    if not tables:
        return pd.DataFrame(
            {
                "media_id": pd.Series([], dtype=str),
                "media_path": pd.Series([], dtype=str),
                "duration_s": pd.Series([], dtype=np.float64),
                "n_windows": pd.Series([], dtype=np.int64),
                "n_frames": pd.Series([], dtype=np.int64),
                "has_video": pd.Series([], dtype=bool),
                "size": pd.Series([], dtype=np.int64),
                "mtime_ns": pd.Series([], dtype=np.int64),
                "first_row": pd.Series([], dtype=np.int64),
                "chunk": pd.Series([], dtype=np.int64),
            }
        )
    return pd.concat(tables, ignore_index=True)


def _prepare_root(root: Path) -> None:
    """Refuse to scatter store files into a folder that holds something else."""
    if root.exists() and not root.is_dir():
        raise UserError(f"--store {root} is a file; give a folder for the feature store.")
    if root.is_dir() and not (root / HEADER_FILE).exists():
        foreign = [p.name for p in root.iterdir() if p.name != LOCK_FILE]
        if foreign:
            raise UserError(
                f"--store {root} is a non-empty folder that is not a feature store; "
                "give a new or empty folder."
            )


class StoreWriter:
    """Write media files into chunks of about `chunk_windows` windows, committed atomically.

    Use as a context manager: entering takes the write lock, creates or checks `store.json`
    against `frontend`, and removes temp folders left by a killed writer; leaving commits the
    open chunk (unless leaving on an exception: then the open chunk is deleted, so an interrupted
    run never commits a partial chunk it was not asked to).

    A media file is written block by block through `media(source)` (or whole through `add`, or
    from a worker's spool through `add_spooled`). A chunk is committed as soon as the media
    accepted into it reach `chunk_windows` windows, so chunks end at media boundaries and depend
    only on the order in which files are accepted.
    """

    def __init__(
        self, root: Path, frontend: dict[str, Any], chunk_windows: int = DEFAULT_CHUNK_WINDOWS
    ) -> None:
        missing = [k for k in SHAPE_KEYS if k not in frontend]
        if missing:
            raise ValueError(f"frontend parameters lack {missing}")
        if chunk_windows < 1:
            raise UserError(f"the chunk size must be at least 1 window, not {chunk_windows}.")
        self.root = Path(root)
        self.frontend = dict(frontend)
        self.chunk_windows = chunk_windows
        self.chunks_added = 0
        self.windows_added = 0
        self._chunk: OpenChunk | None = None
        self._sink: MediaSink | None = None
        self._stack = ExitStack()

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> StoreWriter:
        _prepare_root(self.root)
        with ExitStack() as stack:
            stack.enter_context(store_lock(self.root))
            self._open()
            self._stack = stack.pop_all()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self.flush()
        finally:
            try:
                if self._chunk is not None:
                    self._chunk.remove()
                    self._chunk = self._sink = None
            finally:
                self._stack.close()

    def _open(self) -> None:
        header_path = self.root / HEADER_FILE
        if header_path.exists():
            stored = read_header(self.root)["frontend"]
            if stored != self.frontend:
                differ = sorted(
                    k
                    for k in set(stored) | set(self.frontend)
                    if stored.get(k) != self.frontend.get(k)
                )
                raise UserError(
                    f"{self.root} was made with other frontend parameters ({', '.join(differ)} "
                    "differ); ingest into a new store."
                )
        else:
            write_json_atomic(header_path, new_header(self.frontend), sort_keys=True, durable=True)
        chunks = self.root / CHUNKS_DIR
        chunks.mkdir(exist_ok=True)
        # Only the lock holder writes, so every temp entry here is debris of a killed writer
        # (or of its workers, which exit within a second of it: what they still write in that
        # second is left for the next writer, never read).
        for debris in [*chunks.glob(f"{TEMP_PREFIX}*"), *self.root.glob(f"{TEMP_PREFIX}*")]:
            if debris.is_dir():
                shutil.rmtree(debris, ignore_errors=True)
            else:
                debris.unlink(missing_ok=True)
        self.stored_media = read_stored_media(self.root)
        self._media_ids = set(self.stored_media["media_id"])
        existing = committed_chunk_ids(self.root)
        self._next_chunk = existing[-1] + 1 if existing else 0

    # -- writing ---------------------------------------------------------------------------

    def has_media(self, media_id: str) -> bool:
        """Whether a media file with this content hash is stored or accepted into the open chunk."""
        return media_id in self._media_ids

    def media(self, source: MediaSource) -> MediaSink:
        """Start writing a media file into the open chunk (one at a time; not one already
        stored, see `has_media`)."""
        if self._sink is not None:
            raise RuntimeError("finish or discard the media file being written first")
        if source.media_id in self._media_ids:
            raise ValueError(f"media {source.media_id} is already in the store")
        if self._chunk is None:
            name = f"{TEMP_PREFIX}{chunk_name(self._next_chunk)}-{os.getpid()}"
            self._chunk = OpenChunk(self.root / CHUNKS_DIR / name, self.frontend)
        self._sink = MediaSink(self, self._chunk, source)
        return self._sink

    def add(self, record: MediaRecord) -> bool:
        """Write one whole media file. Returns False, storing nothing, when the same content is
        already stored or accepted."""
        if self.has_media(record.media_id):
            return False
        source = MediaSource(record.media_id, record.media_path, record.size, record.mtime_ns)
        sink = self.media(source)
        try:
            sink.write(record.logmel, record.frames, record.has_frame, record.time_s)
        except BaseException:
            sink.discard()
            raise
        sink.finish(record.duration_s)
        return True

    def add_spooled(self, spooled: SpooledMedia) -> bool:
        """Append a media file a worker spooled (`chunk_files.Spool`), then delete the spool.
        Returns False, storing nothing, when the same content is already stored or accepted."""
        try:
            if self.has_media(spooled.source.media_id):
                return False
            sink = self.media(spooled.source)
            try:
                sink.copy_spool(spooled)
            except BaseException:
                sink.discard()
                raise
            sink.finish(spooled.duration_s)
            return True
        finally:
            shutil.rmtree(spooled.folder, ignore_errors=True)

    def _accept(self, sink: MediaSink, duration_s: float, first_frame_row: int) -> None:
        chunk = self._chunk
        assert chunk is not None and sink is self._sink
        chunk.accept(sink.source, duration_s, sink.log, first_frame_row)
        self._media_ids.add(sink.source.media_id)
        self._sink = None
        if chunk.n_windows >= self.chunk_windows:
            self.flush()

    def _release(self, sink: MediaSink) -> None:
        assert sink is self._sink
        self._sink = None

    def flush(self) -> int | None:
        """Commit the open chunk; returns its id (None when it holds no media)."""
        if self._sink is not None:
            raise RuntimeError("finish or discard the media file being written first")
        chunk, self._chunk = self._chunk, None
        if chunk is None:
            return None
        if not chunk.media_rows:  # every media file written into it was discarded
            chunk.remove()
            return None
        chunk_id = self._next_chunk
        try:
            chunk.commit(self.root / CHUNKS_DIR / chunk_name(chunk_id))
        except BaseException:
            # A full disk (or any failure) must not leave a half-written chunk filling it.
            chunk.remove()
            raise
        self._next_chunk += 1
        self.chunks_added += 1
        self.windows_added += chunk.n_windows
        return chunk_id


class MediaSink(BlockSink):
    """One media file being written into the writer's open chunk, block by block (from
    `StoreWriter.media`). Nothing of it belongs to the chunk until `finish`; `discard` cuts what
    was written back out of the chunk's files, so a file found bad half-way leaves nothing."""

    def __init__(self, writer: StoreWriter, chunk: OpenChunk, source: MediaSource) -> None:
        super().__init__(WindowLog(writer.frontend), chunk.logmel, chunk.frames)
        self.source = source
        self._writer = writer
        self._chunk = chunk
        self._start = (chunk.logmel.rows, chunk.frames.rows)

    def copy_spool(self, spooled: SpooledMedia) -> None:
        """Append the windows of a spooled media file."""
        self.log.add_spooled(spooled)
        with open(spooled.folder / SPOOL_LOGMEL, "rb") as f:
            self._chunk.logmel.append(f, spooled.n_windows)
        with open(spooled.folder / SPOOL_FRAMES, "rb") as f:
            self._chunk.frames.append(f, int(spooled.has_frame.sum()))

    def finish(self, duration_s: float) -> None:
        """Accept the file into the chunk (which is committed if this fills it)."""
        self._writer._accept(self, duration_s, self._start[1])

    def discard(self) -> None:
        """Cut the file's rows back out of the chunk's files."""
        self._chunk.logmel.truncate(self._start[0])
        self._chunk.frames.truncate(self._start[1])
        self._writer._release(self)
