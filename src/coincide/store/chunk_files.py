"""The files under the store writer: a chunk being written, and a media file spooled by a worker.

Both grow block by block as a file is decoded, so that no process holds a file's features whole.
An open chunk's two arrays are `.npy` files whose header states the row count only when the chunk
is committed (`GrowingNpy`), and can be cut back to where a media file began; its tables wait in
memory, a few dozen bytes a window. A spool (`Spool`) is a folder of raw rows that a decoding
worker writes and the writer appends to its open chunk (`coincide.store.writer`).
"""

from __future__ import annotations

import io
import os
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import pandas as pd

from coincide.store.layout import FRAMES_FILE, LOGMEL_FILE, MEDIA_FILE, WINDOWS_FILE

SPOOL_LOGMEL = "logmel.raw"
SPOOL_FRAMES = "frames.raw"
_COPY_BYTES = 1 << 20


@dataclass(frozen=True)
class MediaSource:
    """The file a media's features come from: its content hash, path, size and mtime."""

    media_id: str
    media_path: str
    size: int
    mtime_ns: int


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WindowLog:
    """What a sink keeps of the windows it was given: has_frame and time_s (9 bytes a window) and
    whether the file has video; checks every block against the store's shapes.

    frontend: the store's parameters (`n_mels`, `window_frames`, `frame_size`).
    """

    def __init__(self, frontend: dict[str, Any]) -> None:
        self.mel_shape = (frontend["n_mels"], frontend["window_frames"])
        size = frontend["frame_size"]
        self.frame_shape = (size, size, 3)
        self.has_video: bool | None = None
        self._has_frame: list[np.ndarray] = []
        self._time_s: list[np.ndarray] = []
        self.n_windows = 0
        self.n_frames = 0

    def add(
        self,
        logmel: np.ndarray,
        frames: np.ndarray | None,
        has_frame: np.ndarray,
        time_s: np.ndarray,
    ) -> np.ndarray:
        """Check one block, (n, mel, frames) log-mel, (n, size, size, 3) frames or None, (n,)
        has_frame and time_s, and note its windows; returns has_frame as bool."""
        n = len(logmel)
        if logmel.shape[1:] != self.mel_shape:
            raise ValueError(f"logmel windows are {logmel.shape[1:]}, store needs {self.mel_shape}")
        has = np.asarray(has_frame, dtype=bool)
        if has.shape != (n,) or np.shape(time_s) != (n,):
            raise ValueError("has_frame and time_s need one entry per window")
        if frames is None:
            if has.any():
                raise ValueError("has_frame is set for a media file without frames")
        elif frames.shape != (n, *self.frame_shape):
            raise ValueError(f"frames are {frames.shape}, store needs (n, *{self.frame_shape})")
        self._note(frames is not None, has, np.asarray(time_s, dtype=np.float64))
        return has

    def add_spooled(self, spooled: SpooledMedia) -> None:
        """Note the windows of a spooled file (checked by the spool's own log when written)."""
        self._note(spooled.has_video, spooled.has_frame, spooled.time_s)

    def _note(self, has_video: bool, has_frame: np.ndarray, time_s: np.ndarray) -> None:
        if self.has_video is not None and has_video != self.has_video:
            raise ValueError("some blocks of a media file have frames and others have none")
        self.has_video = has_video
        self._has_frame.append(has_frame)
        self._time_s.append(time_s)
        self.n_windows += len(has_frame)
        self.n_frames += int(has_frame.sum())

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(has_frame, time_s) of every window noted, in order."""
        if not self._has_frame:
            return np.zeros(0, bool), np.zeros(0, np.float64)
        return np.concatenate(self._has_frame), np.concatenate(self._time_s)


class GrowingNpy:
    """A `.npy` file written in row blocks whose number is known only at the end.

    The header is written for 0 rows and rewritten by `close`: numpy pads a header so that its
    first dimension can grow to 21 digits without changing the header's length. `truncate`
    cuts rows off the end. The closed file is the one `np.save` writes for the whole array.
    """

    def __init__(self, path: Path, dtype: type, row_shape: tuple[int, ...]) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.row_shape = row_shape
        self.row_bytes = self.dtype.itemsize * int(np.prod(row_shape))
        self.rows = 0
        self._header = self._header_bytes(0)
        self._file: BinaryIO = open(path, "w+b")  # noqa: SIM115 (closed by close or abandon)
        try:
            self._file.write(self._header)
        except BaseException:
            self._file.close()
            raise

    def _header_bytes(self, rows: int) -> bytes:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header,
            {
                "descr": np.lib.format.dtype_to_descr(self.dtype),
                "fortran_order": False,
                "shape": (rows, *self.row_shape),
            },
        )
        return header.getvalue()

    def write(self, rows: np.ndarray) -> None:
        """Append rows, (k, *row_shape)."""
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"rows of shape {rows.shape[1:]} for a file of {self.row_shape}")
        self._file.write(np.ascontiguousarray(rows, dtype=self.dtype).data)
        self.rows += len(rows)

    def append(self, source: BinaryIO, rows: int) -> None:
        """Append `rows` raw rows read from `source`, which must hold exactly that many."""
        left = rows * self.row_bytes
        while left:
            piece = source.read(min(left, _COPY_BYTES))
            if not piece:
                raise ValueError(f"{source.name} holds fewer than {rows} rows")
            self._file.write(piece)
            left -= len(piece)
        if source.read(1):
            raise ValueError(f"{source.name} holds more than {rows} rows")
        self.rows += rows

    def truncate(self, rows: int) -> None:
        """Cut the file back to its first `rows` rows."""
        self._file.truncate(len(self._header) + rows * self.row_bytes)
        self._file.seek(0, os.SEEK_END)
        self.rows = rows

    def close(self) -> None:
        """Write the final header, fsync, close."""
        try:
            header = self._header_bytes(self.rows)
            if len(header) != len(self._header):
                raise ValueError(f"{self.path}: the .npy header cannot grow to {self.rows} rows")
            self._file.seek(0)
            self._file.write(header)
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()

    def abandon(self) -> None:
        self._file.close()


class OpenChunk:
    """A chunk being written in its temp folder: the array files grow as media are written; the
    per-window and per-media rows of the media accepted so far wait for `commit`."""

    def __init__(self, folder: Path, frontend: dict[str, Any]) -> None:
        shape = WindowLog(frontend)
        self.folder = folder
        folder.mkdir()
        files: list[GrowingNpy] = []
        try:
            files.append(GrowingNpy(folder / LOGMEL_FILE, np.float32, shape.mel_shape))
            files.append(GrowingNpy(folder / FRAMES_FILE, np.uint8, shape.frame_shape))
        except BaseException:
            for file in files:
                file.abandon()
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self.logmel, self.frames = files
        self.n_windows = 0
        self.media_rows: list[dict[str, Any]] = []
        self._windows: dict[str, list[np.ndarray]] = {
            k: [] for k in ("media_id", "time_s", "has_frame", "frame_row")
        }

    def accept(
        self, source: MediaSource, duration_s: float, log: WindowLog, first_frame_row: int
    ) -> None:
        """Make the windows written since row `n_windows` (and frames since `first_frame_row`)
        a media file of the chunk."""
        has_frame, time_s = log.arrays()
        n = len(has_frame)
        written = (self.logmel.rows - self.n_windows, self.frames.rows - first_frame_row)
        if written != (n, log.n_frames):
            raise ValueError(f"{n} windows and {log.n_frames} frames noted, {written} written")
        rows = np.full(n, -1, dtype=np.int64)
        rows[has_frame] = np.arange(first_frame_row, first_frame_row + log.n_frames)
        for key, values in (
            ("media_id", np.full(n, source.media_id, dtype=object)),
            ("time_s", time_s),
            ("has_frame", has_frame),
            ("frame_row", rows),
        ):
            self._windows[key].append(values)
        self.media_rows.append(
            {
                "media_id": source.media_id,
                "media_path": source.media_path,
                "duration_s": float(duration_s),
                "n_windows": n,
                "n_frames": log.n_frames,
                "has_video": bool(log.has_video),
                "size": int(source.size),
                "mtime_ns": int(source.mtime_ns),
                "first_row": self.n_windows,
            }
        )
        self.n_windows += n

    def commit(self, final: Path) -> None:
        """Finish and fsync every file, then rename the folder to `final`: the commit."""
        self.logmel.close()
        self.frames.close()
        folder = self.folder
        window_table = pd.DataFrame(
            {
                "media_id": np.concatenate(self._windows["media_id"]).astype(str),
                "time_s": np.concatenate(self._windows["time_s"]),
                "has_frame": np.concatenate(self._windows["has_frame"]),
                "frame_row": np.concatenate(self._windows["frame_row"]),
            }
        )
        window_table.to_parquet(folder / WINDOWS_FILE, index=False)
        pd.DataFrame(self.media_rows).to_parquet(folder / MEDIA_FILE, index=False)
        for name in (WINDOWS_FILE, MEDIA_FILE):
            with open(folder / name, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(folder)
        os.rename(folder, final)
        fsync_dir(final.parent)

    def remove(self) -> None:
        """Delete the temp folder and all in it."""
        self.logmel.abandon()
        self.frames.abandon()
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class SpooledMedia:
    """A media file's features in a spool folder (`Spool.finish`): raw log-mel rows, raw frame
    rows of the windows that have one, and the small per-window arrays, which travel with this
    object between processes."""

    source: MediaSource
    duration_s: float
    folder: Path
    has_video: bool
    has_frame: np.ndarray
    time_s: np.ndarray

    @property
    def n_windows(self) -> int:
        return len(self.has_frame)


class BlockSink(ABC):
    """Where a media file's windows are written block by block: into the store writer's open
    chunk (`writer.MediaSink`) or a worker's spool (`Spool`). Nothing of the file is kept unless
    `finish` is called; `discard` takes back what was written."""

    def __init__(self, log: WindowLog, logmel_rows: RowFile, frame_rows: RowFile) -> None:
        self.log = log
        self._logmel_rows = logmel_rows
        self._frame_rows = frame_rows

    def write(
        self,
        logmel: np.ndarray,
        frames: np.ndarray | None,
        has_frame: np.ndarray,
        time_s: np.ndarray,
    ) -> None:
        """Append a block: (n, mel, frames) float32 log-mel, (n, size, size, 3) uint8 frames or
        None for a file without video, (n,) bool has_frame, (n,) float64 window starts."""
        has = self.log.add(logmel, frames, has_frame, time_s)
        self._logmel_rows.write(logmel)
        if frames is not None and has.any():
            self._frame_rows.write(frames if has.all() else frames[has])

    @abstractmethod
    def finish(self, duration_s: float) -> SpooledMedia | None:
        """Keep the file: it belongs to the chunk (None), or its spool is done (SpooledMedia)."""

    @abstractmethod
    def discard(self) -> None:
        """Take back every block written for the file."""


class RowFile(Protocol):
    def write(self, rows: np.ndarray) -> None: ...


class RawRows:
    """A file of raw rows of one dtype, appended block by block (a spool's: no header)."""

    def __init__(self, path: Path, dtype: type) -> None:
        self.dtype = np.dtype(dtype)
        self._file = open(path, "wb")  # noqa: SIM115 (closed by close)

    def write(self, rows: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(rows, dtype=self.dtype).data)

    def close(self) -> None:
        self._file.close()


class Spool(BlockSink):
    """Writes one media file's features block by block into a new folder `folder`, for a process
    that decodes files for the store writer of another (an ingest worker)."""

    def __init__(self, folder: Path, frontend: dict[str, Any], source: MediaSource) -> None:
        self.folder = folder
        self.source = source
        folder.mkdir()
        self._files = [RawRows(folder / SPOOL_LOGMEL, np.float32)]
        try:
            self._files.append(RawRows(folder / SPOOL_FRAMES, np.uint8))
        except BaseException:
            self.discard()
            raise
        super().__init__(WindowLog(frontend), *self._files)

    def finish(self, duration_s: float) -> SpooledMedia:
        self._close()
        has_frame, time_s = self.log.arrays()
        return SpooledMedia(
            self.source, duration_s, self.folder, bool(self.log.has_video), has_frame, time_s
        )

    def discard(self) -> None:
        self._close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _close(self) -> None:
        for file in self._files:
            file.close()
