"""Where things live inside a feature store folder, and its `store.json` header.

```
STORE/
  store.json            format version + the frontend parameters the features were made with
  chunks/000000/        one committed chunk (renamed into place: the rename is the commit)
    logmel.npy          (n, mel, frames) float32
    frames.npy          (m, height, width, 3) uint8, only the windows that have a frame
    windows.parquet     per window: media_id, time_s, has_frame, frame_row (-1 without frame)
    media.parquet       per media file in the chunk: media_id, media_path, duration_s, ...
  chunks/.tmp-...       a chunk being written; never read, removed by the next writer
  labels.json           clip-level labels {media_id: [label, ...]}
  ingest_report.json    skipped files and the counts of each ingest run
  .lock                 held (filelock) by the one process allowed to write
```
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from coincide.errors import UserError

FORMAT_NAME = "coincide-feature-store"
FORMAT_VERSION = 1

HEADER_FILE = "store.json"
CHUNKS_DIR = "chunks"
LABELS_FILE = "labels.json"
REPORT_FILE = "ingest_report.json"
LOCK_FILE = ".lock"
TEMP_PREFIX = ".tmp-"

LOGMEL_FILE = "logmel.npy"
FRAMES_FILE = "frames.npy"
WINDOWS_FILE = "windows.parquet"
MEDIA_FILE = "media.parquet"

_CHUNK_NAME = re.compile(r"^\d{6,}$")


def chunk_name(chunk_id: int) -> str:
    """Folder name of a committed chunk: zero-padded so that names sort like ids."""
    return f"{chunk_id:06d}"


def committed_chunk_ids(root: Path) -> list[int]:
    """Ids of the committed chunks of a store, ascending (temp folders are not chunks)."""
    chunks = root / CHUNKS_DIR
    if not chunks.is_dir():
        return []
    return sorted(int(p.name) for p in chunks.iterdir() if _CHUNK_NAME.match(p.name) and p.is_dir())


def read_json_or_none(path: Path, remedy: str) -> Any:
    """A JSON file's content, or None when there is none; a file that does not parse is a
    UserError ending in `remedy` ("delete it and ...")."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise UserError(f"cannot parse {path} ({err}); {remedy}.") from err


def read_header(root: Path) -> dict[str, Any]:
    """Read and check `store.json`; a folder that is not a store is a user error."""
    header_path = root / HEADER_FILE
    if not header_path.is_file():
        raise UserError(
            f"{root} is not a coincide feature store (no {HEADER_FILE}); "
            f"create one with `coincide ingest MEDIA --store {root}`."
        )
    try:
        header = json.loads(header_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {header_path} ({err}); the store header is damaged.") from err
    if header.get("format") != FORMAT_NAME or header.get("version") != FORMAT_VERSION:
        raise UserError(
            f"{root} holds format {header.get('format')!r} version {header.get('version')!r}, "
            f"but this coincide reads {FORMAT_NAME!r} version {FORMAT_VERSION}; "
            "ingest the media into a new store."
        )
    return header


def new_header(frontend: dict[str, Any]) -> dict[str, Any]:
    """The `store.json` content of a new store made with these frontend parameters."""
    return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "frontend": dict(frontend)}
