"""Files that appear whole or not at all: written under a temporary name next to the target,
then renamed over it (`os.replace`, atomic on POSIX and Windows). A reader sees the old file or
the new one, never half of one; a write that fails leaves the old file and no temporary one.
Every file coincide writes for another step to read goes through here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_path(path: Path, *, durable: bool = False) -> Iterator[Path]:
    """A temporary path to write `path`'s new content to (same folder, same suffix, so that
    writers that add a suffix, such as `np.save`, keep it); renamed over `path` when the block
    completes, removed when it raises. `durable` flushes the content to the disk first (fsync),
    for files that must survive a power cut, not only a killed process."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as written:
                os.fsync(written.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_output(path: Path, newline: str | None = None) -> Iterator[IO[str]]:
    """A UTF-8 text stream whose content appears under `path` only if the block completes."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline=newline) as stream:
        yield stream


def write_text_atomic(path: Path, text: str, *, durable: bool = False) -> None:
    """`path.write_text(text)` (UTF-8), atomically."""
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """`path.write_bytes(data)`, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(
    path: Path, payload: Any, *, sort_keys: bool = False, durable: bool = False
) -> None:
    """`payload` as indented UTF-8 JSON (one trailing newline), atomically."""
    text = json.dumps(payload, indent=1, sort_keys=sort_keys, ensure_ascii=False) + "\n"
    write_text_atomic(path, text, durable=durable)
