"""The identity of a media file in a store: a hash of its bytes, whatever its path."""

from __future__ import annotations

import hashlib
from pathlib import Path

_READ_BYTES = 1 << 20


def media_id_of(path: Path) -> str:
    """16 hex digits of the BLAKE2b hash of the file's content (raises OSError if unreadable).

    With 64 bits, the chance that any two of a million different files share an id is about
    3e-8 (n^2 / 2^65), so the id can stand for the content.
    """
    digest = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as f:
        while block := f.read(_READ_BYTES):
            digest.update(block)
    return digest.hexdigest()
