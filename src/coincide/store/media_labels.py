"""Clip-level labels of a feature store: `labels.json`, {media_id: [label, ...]}.

Labels are keyed by the content hash of the media file, so they follow the file whatever path it
was ingested from. Saving merges (union) with what is already there: a label once saved stays.
Writers must hold the store's write lock (see `coincide.store.writer.store_lock`).
"""

from __future__ import annotations

import csv
import json
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from coincide.errors import UserError
from coincide.files import write_json_atomic
from coincide.store.layout import LABELS_FILE
from coincide.store.media_id import media_id_of


def unprintable(label: str) -> str | None:
    """The first character of `label` that would break a one-label-per-line file (a control
    character such as a newline or tab, or a Unicode line or paragraph separator), or None."""
    for char in label:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            return char
    return None


def check_label(label: str, where: str) -> str:
    """`label` if it is a usable class name; else a UserError saying which character is wrong
    and `where` it came from. Class names end up one per line (export's labels.txt, CSVs), so
    control characters and line separators are refused rather than quoted."""
    char = unprintable(label)
    if char is not None:
        raise UserError(
            f"the label {label!r} from {where} contains the control character {char!r}; "
            "class names must be printable text on one line."
        )
    return label


def read_labels(root: Path) -> dict[str, list[str]]:
    """The labels saved in a store: media_id -> sorted labels (empty dict when none)."""
    path = Path(root) / LABELS_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path} ({err}); the label file is damaged.") from err
    return {str(media_id): sorted({str(x) for x in labels}) for media_id, labels in raw.items()}


def merge_labels(root: Path, new: Mapping[str, Iterable[str]]) -> int:
    """Add labels to the store's label file (union with the saved ones, atomic rewrite).

    Returns the number of (media_id, label) pairs that were not saved before.
    """
    saved = {media_id: set(labels) for media_id, labels in read_labels(root).items()}
    added = 0
    for labels in new.values():
        for label in labels:
            check_label(label, "the labels to save")
    for media_id, labels in new.items():
        have = saved.setdefault(media_id, set())
        fresh = set(labels) - have
        added += len(fresh)
        have |= fresh
    if added:
        payload = {media_id: sorted(labels) for media_id, labels in sorted(saved.items()) if labels}
        write_json_atomic(Path(root) / LABELS_FILE, payload, sort_keys=True, durable=True)
    return added


@dataclass
class LabelsCsv:
    """The rows of a `path,label` CSV with paths resolved against the CSV's folder."""

    source: Path
    rows: list[tuple[Path, str]] = field(default_factory=list)
    blank_lines: list[int] = field(default_factory=list)  # rows without a path or a label


def read_labels_csv(csv_path: Path) -> LabelsCsv:
    """Parse a labels CSV with columns `path,label` (one row per label; a file can have several).

    Relative paths are taken relative to the CSV's folder. Paths are resolved (symlinks,
    `..`) so that they compare equal to the resolved media paths kept in the store.
    """
    csv_path = Path(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            repeated = sorted({c for c in columns if columns.count(c) > 1})
            if repeated:
                raise UserError(
                    f"{csv_path} names the column {repeated[0]!r} twice, so one of them would be "
                    "dropped; write one `path,label` row per label instead."
                )
            if "path" not in columns or "label" not in columns:
                raise UserError(
                    f"{csv_path} has columns {columns} but needs `path` and `label`; "
                    "write one `path,label` row per label."
                )
            reader.fieldnames = columns
            parsed = LabelsCsv(source=csv_path)
            base = csv_path.resolve().parent
            for line, row in enumerate(reader, start=2):
                path_text, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
                if not path_text or not label:
                    parsed.blank_lines.append(line)
                    continue
                check_label(label, f"{csv_path} line {line}")
                parsed.rows.append(((base / Path(path_text).expanduser()).resolve(), label))
    except OSError as err:
        raise UserError(f"cannot read the labels file {csv_path} ({err.strerror}).") from err
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{csv_path} is not a readable UTF-8 CSV ({err}); fix the file.") from err
    return parsed


@dataclass
class LabelMatch:
    """CSV rows matched to media of a store: media_id -> labels, and the rows left over."""

    labels: dict[str, set[str]] = field(default_factory=dict)
    unmatched: list[tuple[Path, str]] = field(default_factory=list)


def match_labels(
    parsed: LabelsCsv, known_paths: Mapping[str, str], stored_ids: set[str]
) -> LabelMatch:
    """Match CSV rows to stored media: by resolved path first, else by the file's content hash.

    known_paths: resolved path -> media_id for paths known to hold stored content (the stored
    media paths, plus duplicates seen by an ingest run). The hash fallback finds a file that was
    ingested from another path or copied since; rows whose file is not in the store are returned
    in `unmatched`.
    """
    match = LabelMatch()
    hashed: dict[Path, str | None] = {}
    for path, label in parsed.rows:
        media_id = known_paths.get(str(path))
        if media_id is None:
            if path not in hashed:
                try:
                    hashed[path] = media_id_of(path) if path.is_file() else None
                except OSError:
                    hashed[path] = None  # unreadable: reported below as unmatched
            media_id = hashed[path]
        if media_id is None or media_id not in stored_ids:
            match.unmatched.append((path, label))
            continue
        match.labels.setdefault(media_id, set()).add(label)
    return match
