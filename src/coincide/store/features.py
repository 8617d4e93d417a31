"""Read a feature store: windows in global order, arrays memory-mapped chunk by chunk.

```python
store = coincide.open_store("train_store")
len(store)            # number of 0.96 s windows
store.logmel[i]       # float32 (mel, frames), e.g. (64, 96); slices / index arrays stack
store.frames[i]       # uint8 (128, 128, 3); NoFrameError for a window without a frame
store.index           # DataFrame: media_path, media_id, time_s, has_frame, labels, chunk, row
```

Global window order is chunk order, then row order inside a chunk. Arrays are opened with
`np.load(mmap_mode="r")` on first use, so a store can be far bigger than RAM and shared by many
processes; the store object pickles without its maps (DataLoader workers reopen them lazily).
A store opened for reading sees the chunks committed when it was opened.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from coincide.store.layout import (
    CHUNKS_DIR,
    FRAMES_FILE,
    LOGMEL_FILE,
    WINDOWS_FILE,
    chunk_name,
    committed_chunk_ids,
    read_header,
)
from coincide.store.media_labels import read_labels
from coincide.store.writer import read_stored_media

WindowKey = int | np.integer | slice | list[int] | np.ndarray


class NoFrameError(KeyError):
    """A frame was asked for a window whose media has no picture at that time."""

    def __str__(self) -> str:
        # KeyError quotes its message; this error is read by people, so print it plainly.
        return str(self.args[0]) if self.args else ""


def open_store(path: str | Path) -> FeatureStore:
    """Open a feature store folder for reading (see the module docstring for the API)."""
    return FeatureStore(Path(path))


def _window_positions(key: WindowKey, n: int) -> tuple[np.ndarray, bool]:
    """Turn an index key into window positions (int64) and whether the key was a scalar."""
    if isinstance(key, int | np.integer):
        i = int(key)
        if not -n <= i < n:
            raise IndexError(f"window {i} is out of range for a store of {n} windows")
        return np.array([i % n], dtype=np.int64), True
    if isinstance(key, slice):
        return np.arange(n, dtype=np.int64)[key], False
    positions = np.asarray(key)
    if positions.dtype == bool:
        if positions.shape != (n,):
            raise IndexError(f"a boolean window mask needs shape ({n},), not {positions.shape}")
        return np.flatnonzero(positions).astype(np.int64), False
    if positions.size and not np.issubdtype(positions.dtype, np.integer):
        raise IndexError(f"windows are indexed by integers, not {positions.dtype}")
    positions = positions.astype(np.int64).reshape(-1)
    bad = (positions < -n) | (positions >= n)
    if bad.any():
        raise IndexError(f"window {positions[bad][0]} is out of range for a store of {n} windows")
    return positions % max(n, 1), False


class _WindowArray:
    """Array-like view of one per-window array of the store (`store.logmel`, `store.frames`)."""

    def __init__(self, store: FeatureStore, name: str, item_shape: tuple[int, ...], dtype: Any):
        self._store = store
        self._name = name
        self.shape = (len(store), *item_shape)
        self.dtype = np.dtype(dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: WindowKey) -> np.ndarray:
        positions, scalar = _window_positions(key, len(self))
        stacked = self._store._gather(self._name, positions, self.shape[1:], self.dtype)
        return stacked[0] if scalar else stacked


class FeatureStore:
    """A feature store opened for reading; build it with `open_store(path)`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.frontend: dict[str, Any] = read_header(self.root)["frontend"]
        self._chunk_ids = committed_chunk_ids(self.root)
        tables = []
        for chunk_id in self._chunk_ids:
            table = pd.read_parquet(self.root / CHUNKS_DIR / chunk_name(chunk_id) / WINDOWS_FILE)
            table["chunk"] = chunk_id
            table["row"] = np.arange(len(table), dtype=np.int64)
            tables.append(table)
        self._windows = (
            pd.concat(tables, ignore_index=True)
            if tables
            else pd.DataFrame(
                {
                    "media_id": pd.Series([], dtype=str),
                    "time_s": pd.Series([], dtype=np.float64),
                    "has_frame": pd.Series([], dtype=bool),
                    "frame_row": pd.Series([], dtype=np.int64),
                    "chunk": pd.Series([], dtype=np.int64),
                    "row": pd.Series([], dtype=np.int64),
                }
            )
        )
        sizes = [len(table) for table in tables]
        self._chunk_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._chunk_of_window = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
        self._row = self._windows["row"].to_numpy(dtype=np.int64)
        self._frame_row = self._windows["frame_row"].to_numpy(dtype=np.int64)
        self._media = read_stored_media(self.root)
        self.labels: dict[str, list[str]] = read_labels(self.root)
        self._maps: dict[tuple[int, str], np.ndarray] = {}

    # -- pickling: maps are per process ---------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        # Maps belong to one process; the cached tables and views are rebuilt on demand.
        state = self.__dict__.copy()
        state["_maps"] = {}
        for cached in ("logmel", "frames", "index", "media"):
            state.pop(cached, None)
        return state

    # -- sizes and layout ------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._windows)

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.root)!r}, windows={len(self)}, media={len(self._media)})"

    def chunk_ids(self) -> list[int]:
        """Ids of the committed chunks, in global window order."""
        return list(self._chunk_ids)

    def chunk_range(self, chunk_id: int) -> range:
        """Global window positions held by one chunk (so a rank can read only its chunks)."""
        pos = self._chunk_ids.index(chunk_id)
        return range(int(self._chunk_starts[pos]), int(self._chunk_starts[pos + 1]))

    # -- arrays ----------------------------------------------------------------------------

    @cached_property
    def logmel(self) -> _WindowArray:
        """Log-mel windows, indexed like a (windows, mel, frames) float32 array."""
        shape = (self.frontend["n_mels"], self.frontend["window_frames"])
        return _WindowArray(self, LOGMEL_FILE, shape, np.float32)

    @cached_property
    def frames(self) -> _WindowArray:
        """Frames, indexed like a (windows, height, width, 3) uint8 array; NoFrameError for a
        window without a frame (see `index.has_frame`)."""
        size = self.frontend["frame_size"]
        return _WindowArray(self, FRAMES_FILE, (size, size, 3), np.uint8)

    def chunk_array(self, chunk_id: int, name: str) -> np.ndarray:
        """The read-only memory map of one chunk's "logmel" (rows, mel, frames) float32 or
        "frames" (rows with a frame, height, width, 3) uint8 array, for readers that walk
        chunks themselves (`index.row` and `chunk_frame_rows` give the rows)."""
        files = {"logmel": LOGMEL_FILE, "frames": FRAMES_FILE}
        if name not in files:
            raise ValueError(f"a chunk holds 'logmel' and 'frames', not {name!r}")
        return self._map(self._chunk_ids.index(chunk_id), files[name])

    def chunk_frame_rows(self, chunk_id: int) -> np.ndarray:
        """(windows of the chunk,) int64: each window's row in the chunk's frames, -1 if none."""
        window_range = self.chunk_range(chunk_id)
        return self._frame_row[window_range.start : window_range.stop].copy()

    def non_finite_media(self) -> list[str]:
        """Paths of the media whose log-mel windows hold a NaN or an infinity (ingest refuses
        them now; a store written before that check may have some). Reads every chunk once,
        a few thousand windows at a time."""
        bad: set[str] = set()
        for pos in range(len(self._chunk_ids)):
            array = self._map(pos, LOGMEL_FILE)
            start = int(self._chunk_starts[pos])
            for lo in range(0, len(array), 4096):
                block = np.asarray(array[lo : lo + 4096])
                rows = np.flatnonzero(~np.isfinite(block.reshape(len(block), -1)).all(axis=1))
                bad.update(self._windows["media_id"].iloc[start + lo + rows])
        paths = self._media.set_index("media_id")["media_path"]
        return sorted(str(paths.get(media_id, media_id)) for media_id in bad)

    def _map(self, chunk_pos: int, name: str) -> np.ndarray:
        key = (chunk_pos, name)
        if key not in self._maps:
            folder = self.root / CHUNKS_DIR / chunk_name(self._chunk_ids[chunk_pos])
            self._maps[key] = np.load(folder / name, mmap_mode="r")
        return self._maps[key]

    def _gather(
        self, name: str, positions: np.ndarray, item_shape: tuple[int, ...], dtype: np.dtype
    ) -> np.ndarray:
        """Copy the rows of windows `positions` (global) out of the chunk maps, in that order."""
        if name == FRAMES_FILE:
            frameless = positions[self._frame_row[positions] < 0]
            if frameless.size:
                i = int(frameless[0])
                raise NoFrameError(
                    f"window {i} ({self._window_label(i)}) has no frame; "
                    "check store.index.has_frame before reading store.frames"
                )
            rows = self._frame_row[positions]
        else:
            rows = self._row[positions]
        out = np.empty((len(positions), *item_shape), dtype=dtype)
        chunk_of = self._chunk_of_window[positions]
        for chunk_pos in np.unique(chunk_of):
            mask = chunk_of == chunk_pos
            out[mask] = self._map(int(chunk_pos), name)[rows[mask]]
        return out

    def _window_label(self, i: int) -> str:
        media_id = self._windows["media_id"].iat[i]
        path = self._media.loc[self._media["media_id"] == media_id, "media_path"]
        where = path.iat[0] if len(path) else media_id
        return f"{where} at {self._windows['time_s'].iat[i]:.2f} s"

    # -- tables ----------------------------------------------------------------------------

    @cached_property
    def media(self) -> pd.DataFrame:
        """One row per media file: media_id, media_path, duration_s, n_windows, n_frames,
        has_video, size, mtime_ns, chunk, labels (list of str), first_window (global)."""
        media = self._media.copy()
        media["labels"] = [list(self.labels.get(m, [])) for m in media["media_id"]]
        chunk_pos = np.searchsorted(self._chunk_ids, media["chunk"].to_numpy())
        media["first_window"] = self._chunk_starts[chunk_pos] + media["first_row"].to_numpy()
        return media

    @cached_property
    def index(self) -> pd.DataFrame:
        """One row per window in global order: media_path, media_id, time_s, has_frame, labels
        (list of str, [] when unknown), chunk, row (position inside the chunk)."""
        paths = dict(zip(self._media["media_id"], self._media["media_path"], strict=True))
        media_ids = self._windows["media_id"]
        return pd.DataFrame(
            {
                "media_path": media_ids.map(paths).astype(str),
                "media_id": media_ids.astype(str),
                "time_s": self._windows["time_s"],
                "has_frame": self._windows["has_frame"].astype(bool),
                "labels": [list(self.labels.get(m, [])) for m in media_ids],
                "chunk": self._windows["chunk"],
                "row": self._windows["row"],
            }
        )

    def windows_of(self, media_id: str) -> np.ndarray:
        """Global positions (int64, ascending) of the windows of one media file."""
        return np.flatnonzero(self._windows["media_id"].to_numpy() == media_id).astype(np.int64)
