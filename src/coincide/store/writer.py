"""Append whole media files to a feature store in chunks that appear atomically.

A chunk is written into a temporary folder and renamed into place: the rename is the commit, so
a process killed at any moment leaves either a complete chunk or a temp folder that the next
writer deletes. One writer at a time is enforced with a `filelock` lock on `STORE/.lock` (an
OS lock, flock on POSIX: released by the kernel when the process dies, so a killed run never
leaves the store locked).
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
from coincide.store.layout import (
    CHUNKS_DIR,
    FRAMES_FILE,
    HEADER_FILE,
    LOCK_FILE,
    LOGMEL_FILE,
    MEDIA_FILE,
    TEMP_PREFIX,
    WINDOWS_FILE,
    chunk_name,
    committed_chunk_ids,
    new_header,
    read_header,
    write_json_atomic,
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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StoreWriter:
    """Buffer media files and commit them as chunks of about `chunk_windows` windows.

    Use as a context manager: entering takes the write lock, creates or checks `store.json`
    against `frontend`, and removes temp folders left by a killed writer; leaving commits what
    is buffered (unless leaving on an exception, so an interrupted run never commits a partial
    buffer it was not asked to).
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
        self._buffer: list[MediaRecord] = []
        self._buffered_windows = 0
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
            write_json_atomic(header_path, new_header(self.frontend))
        chunks = self.root / CHUNKS_DIR
        chunks.mkdir(exist_ok=True)
        # Only the lock holder writes, so every temp entry here is debris of a killed writer.
        for debris in [*chunks.glob(f"{TEMP_PREFIX}*"), *self.root.glob(f"{TEMP_PREFIX}*")]:
            if debris.is_dir():
                shutil.rmtree(debris)
            else:
                debris.unlink()
        self.stored_media = read_stored_media(self.root)
        self._media_ids = set(self.stored_media["media_id"])
        existing = committed_chunk_ids(self.root)
        self._next_chunk = existing[-1] + 1 if existing else 0

    # -- writing ---------------------------------------------------------------------------

    def has_media(self, media_id: str) -> bool:
        """Whether a media file with this content hash is stored or buffered."""
        return media_id in self._media_ids

    def add(self, record: MediaRecord) -> bool:
        """Buffer one media file (committing a chunk when the buffer is full).

        Returns False, storing nothing, when the same content is already stored or buffered.
        """
        if record.media_id in self._media_ids:
            return False
        self._check_shapes(record)
        self._media_ids.add(record.media_id)
        self._buffer.append(record)
        self._buffered_windows += record.n_windows
        if self._buffered_windows >= self.chunk_windows:
            self.flush()
        return True

    def flush(self) -> int | None:
        """Commit the buffered media as one chunk; returns its id (None when nothing buffered)."""
        if not self._buffer:
            return None
        chunk_id = self._next_chunk
        final = self.root / CHUNKS_DIR / chunk_name(chunk_id)
        tmp = self.root / CHUNKS_DIR / f"{TEMP_PREFIX}{chunk_name(chunk_id)}-{os.getpid()}"
        tmp.mkdir()
        try:
            self._write_chunk(tmp, self._buffer)
        except BaseException:
            # A full disk (or any failure) must not leave a half-written chunk filling it.
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        os.rename(tmp, final)
        _fsync_dir(final.parent)
        self._next_chunk += 1
        self.chunks_added += 1
        self.windows_added += self._buffered_windows
        self._buffer, self._buffered_windows = [], 0
        return chunk_id

    def _check_shapes(self, record: MediaRecord) -> None:
        n = record.n_windows
        mel_shape = (self.frontend["n_mels"], self.frontend["window_frames"])
        frame_shape = (self.frontend["frame_size"], self.frontend["frame_size"], 3)
        if record.logmel.shape[1:] != mel_shape:
            raise ValueError(
                f"logmel windows are {record.logmel.shape[1:]}, store needs {mel_shape}"
            )
        if record.has_frame.shape != (n,) or record.time_s.shape != (n,):
            raise ValueError("has_frame and time_s need one entry per window")
        if record.frames is None:
            if record.has_frame.any():
                raise ValueError("has_frame is set for a media file without frames")
        elif record.frames.shape != (n, *frame_shape):
            raise ValueError(f"frames are {record.frames.shape}, store needs (n, *{frame_shape})")

    def _write_chunk(self, folder: Path, records: list[MediaRecord]) -> None:
        """Write the four files of a chunk into `folder` and fsync them."""
        n_total = sum(r.n_windows for r in records)
        n_framed = sum(int(r.has_frame.sum()) for r in records)
        mel_shape = (self.frontend["n_mels"], self.frontend["window_frames"])
        size = self.frontend["frame_size"]
        windows: dict[str, list[np.ndarray]] = {k: [] for k in ("media_id", "time_s", "has_frame")}
        frame_rows, media_rows = [], []
        row = frame_row = 0
        # Each record's arrays go straight to the files, avoiding a concatenated copy in RAM
        # (and, unlike a writable memory map, a page fault per 4 KB written).
        with (
            _NpyWriter(folder / LOGMEL_FILE, np.float32, (n_total, *mel_shape)) as logmel,
            _NpyWriter(folder / FRAMES_FILE, np.uint8, (n_framed, size, size, 3)) as frames,
        ):
            for r in records:
                n, has = r.n_windows, np.asarray(r.has_frame, dtype=bool)
                logmel.write(r.logmel)
                rows = np.full(n, -1, dtype=np.int64)
                if r.frames is not None and has.any():
                    k = int(has.sum())
                    frames.write(r.frames if k == n else r.frames[has])
                    rows[has] = np.arange(frame_row, frame_row + k)
                    frame_row += k
                windows["media_id"].append(np.full(n, r.media_id, dtype=object))
                windows["time_s"].append(np.asarray(r.time_s, dtype=np.float64))
                windows["has_frame"].append(has)
                frame_rows.append(rows)
                media_rows.append(
                    {
                        "media_id": r.media_id,
                        "media_path": r.media_path,
                        "duration_s": float(r.duration_s),
                        "n_windows": n,
                        "n_frames": int(has.sum()),
                        "has_video": r.frames is not None,
                        "size": int(r.size),
                        "mtime_ns": int(r.mtime_ns),
                        "first_row": row,
                    }
                )
                row += n
        window_table = pd.DataFrame(
            {
                "media_id": np.concatenate(windows["media_id"]).astype(str),
                "time_s": np.concatenate(windows["time_s"]),
                "has_frame": np.concatenate(windows["has_frame"]),
                "frame_row": np.concatenate(frame_rows),
            }
        )
        window_table.to_parquet(folder / WINDOWS_FILE, index=False)
        pd.DataFrame(media_rows).to_parquet(folder / MEDIA_FILE, index=False)
        for name in (WINDOWS_FILE, MEDIA_FILE):
            with open(folder / name, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(folder)


class _NpyWriter:
    """Writes a `.npy` file of a known dtype and shape in consecutive row blocks, then fsyncs it.

    The file is the one `np.save` would write for the whole array (memory-mappable by
    `np.load(mmap_mode="r")`); leaving the `with` block checks that every row was written.
    """

    def __init__(self, path: Path, dtype: type, shape: tuple[int, ...]) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.shape = shape
        self._row_shape = shape[1:]
        self._rows = 0

    def __enter__(self) -> _NpyWriter:
        self._file = open(self.path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False}
        try:
            np.lib.format.write_array_header_1_0(self._file, {**header, "shape": self.shape})
        except BaseException:
            self._file.close()
            raise
        return self

    def write(self, rows: np.ndarray) -> None:
        """Append rows, (k, *shape[1:]) of the file's dtype."""
        if rows.shape[1:] != self._row_shape:
            raise ValueError(f"rows of shape {rows.shape[1:]} for a file of {self._row_shape}")
        self._file.write(np.ascontiguousarray(rows, dtype=self.dtype).data)
        self._rows += len(rows)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                if self._rows != self.shape[0]:
                    raise ValueError(f"{self.path}: wrote {self._rows} rows of {self.shape[0]}")
                self._file.flush()
                os.fsync(self._file.fileno())
        finally:
            self._file.close()
