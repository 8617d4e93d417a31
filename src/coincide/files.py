"""Files that appear whole or not at all: written to a temporary name next to the target, then
renamed over it (`os.replace`, atomic on POSIX and Windows)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_output(path: Path, newline: str | None = None) -> Iterator[IO[str]]:
    """A text file that appears under `path` only if the block completes (temp file + rename);
    on an error the temp file is removed and `path` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline=newline) as stream:
            yield stream
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
