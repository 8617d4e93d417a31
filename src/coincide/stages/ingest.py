"""Ingest stage: media files and folders -> feature store (`coincide ingest`, `info`, `add-labels`).

The main process finds the files, skips those already stored, and writes chunks; decoding runs in
`workers` processes (in this process when workers == 1, see `coincide.stages.ingest_workers`) and
files are taken in input order, so a run's chunks do not depend on the number of workers. Memory
stays bounded by the decoder's block, whatever a file's length: features go to the store block by
block, and a chunk is committed as soon as it reaches its target size.

Idempotent and resumable: a file is identified by a hash of its content (`media_id`), so the same
file is stored once whatever its path; a chunk becomes visible only when it is complete (see
`coincide.store.writer`), so a run killed at any moment is finished by running it again. A file
that decodes with damage (cut short, undecodable packets) is kept as far as it decodes and
reported with a warning, in the console and in `ingest_report.json`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

from rich.console import Console
from rich.table import Table

from coincide.config.stage import StageSettings
from coincide.console import FilesProgress, print_table
from coincide.errors import UserError
from coincide.media.frontend import frontend_parameters
from coincide.stages.ingest_workers import AlreadyStored, Outcome, Skipped, outcomes
from coincide.store.features import open_store
from coincide.store.ingest_report import MediaWarning, Skip, read_report, record_run
from coincide.store.layout import REPORT_FILE, read_header
from coincide.store.media_labels import LabelsCsv, match_labels, merge_labels, read_labels_csv
from coincide.store.writer import (
    DEFAULT_CHUNK_WINDOWS,
    StoreWriter,
    read_stored_media,
    store_lock,
)

UNMATCHED_SHOWN = 5


# -- finding the files -----------------------------------------------------------------------


def _shown(path: str | Path) -> str:
    """A path as printable text; bytes of a name that are not UTF-8 show as `\\xe9`."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _media_extensions() -> set[str]:
    from coincide.media.decode import MEDIA_EXTENSIONS

    return {ext.lower() for ext in MEDIA_EXTENSIONS}


def find_media(
    paths: Sequence[Path],
    exclude: Path | None = None,
    on_skip: Callable[[str, str], None] | None = None,
) -> list[Path]:
    """Media files named by `paths` (files, or folders searched recursively), sorted, resolved.

    A file named explicitly is taken whatever its extension; inside folders only files with a
    media extension (case-insensitive) are, and the folder `exclude` (the store) is not searched.
    Symlinked folders are followed (each real folder searched once, so a link loop ends). A
    folder that cannot be read is reported through `on_skip(folder, reason)` (by default a line
    on stderr), never skipped silently. Each file appears once even if named twice.
    """
    if on_skip is None:

        def on_skip(folder: str, reason: str) -> None:
            print(f"skipped {folder}: {reason}", file=sys.stderr)

    excluded = _resolve(Path(exclude)) if exclude is not None else None
    extensions = _media_extensions()
    missing = [p for p in paths if not os.path.lexists(p)]
    if missing:
        raise UserError(
            f"{_shown(missing[0])} does not exist; give existing media files or folders."
        )
    found: set[Path] = set()
    for path in paths:
        if not Path(path).is_dir():
            found.add(Path(path).absolute())
            continue
        seen: set[Path] = {_resolve(Path(path))}

        def unreadable(err: OSError) -> None:
            on_skip(_shown(Path(err.filename)), f"folder cannot be read: {err.strerror or err}")

        for folder, dirs, files in os.walk(path, onerror=unreadable, followlinks=True):
            kept = []
            for d in dirs:
                real = _resolve(Path(folder, d))
                if real != excluded and real not in seen:
                    seen.add(real)
                    kept.append(d)
            dirs[:] = kept
            for name in files:
                if os.path.splitext(name)[1].lower() in extensions:
                    found.add(Path(folder, name).absolute())
    # Resolve symlinks and `..` so that a file has one path, the one labels are matched against.
    return sorted({_resolve(p) for p in found}, key=str)


def _resolve(path: Path) -> Path:
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError):
        # A dangling link or a loop: keep the name the user knows; examine() says what is wrong.
        return path.absolute()


# -- the stage -------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _say(console: Console, text: str) -> None:
    """Print a line as is: paths may hold [brackets] (not markup) and must not be wrapped."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


@dataclass
class _Tally:
    """What one run did with each file, and the paths whose content is in the store."""

    writer: StoreWriter
    first_path: dict[str, str]  # media_id -> the path its content was stored from
    in_store: dict[str, str] = field(default_factory=dict)  # path -> media_id
    skips: list[Skip] = field(default_factory=list)
    warnings: list[MediaWarning] = field(default_factory=list)
    warned: int = 0  # files stored with a warning
    ingested_paths: list[str] = field(default_factory=list)  # stored by this run
    already: int = 0
    duplicates: int = 0
    windows: int = 0

    def skip(self, path: str, reason: str) -> str:
        self.skips.append(Skip(_shown(path), reason, _now()))
        return f"skipped {_shown(path)}: {reason}"

    def found(self, path: str, media_id: str) -> str | None:
        """A file whose content is stored: the same file again, or a copy under another path."""
        self.in_store[path] = media_id
        if self.first_path[media_id] == path:
            self.already += 1
            return None
        self.duplicates += 1
        return f"duplicate {_shown(path)}: same content as {_shown(self.first_path[media_id])}"

    def take(self, outcome: Outcome) -> str | None:
        """Store or count one decoding outcome; returns the line to print about it, if any."""
        if isinstance(outcome, Skipped):
            return self.skip(outcome.path, outcome.reason)
        if isinstance(outcome, AlreadyStored):
            return self.found(outcome.path, outcome.media_id)
        path, media_id = outcome.path, outcome.media_id
        # A worker's spool: the same content may have been added earlier in this run.
        if outcome.spooled is not None and not self.writer.add_spooled(outcome.spooled):
            return self.found(path, media_id)
        self.in_store[path] = media_id
        self.first_path[media_id] = path
        self.ingested_paths.append(_shown(path))
        self.windows += outcome.n_windows
        self.warned += bool(outcome.warnings)
        self.warnings += [MediaWarning(_shown(path), media_id, w, _now()) for w in outcome.warnings]
        return "\n".join(f"warning {_shown(path)}: {w}" for w in outcome.warnings) or None


@dataclass(frozen=True)
class IngestSettings(StageSettings):
    """`coincide ingest`: the media files and folders, the store, clip labels (CSV path,label),
    decoding processes and windows per store chunk. Kept in the store's ingest report, one
    entry per run."""

    command: ClassVar[str] = "ingest"
    paths: tuple[Path, ...]
    store: Path
    labels_csv: Path | None = None
    workers: int = 1
    chunk_windows: int = DEFAULT_CHUNK_WINDOWS


def run(settings: IngestSettings, console: Console | None = None) -> int:
    """Ingest media files and folders into the store at `store`; returns the exit code (0).

    Raises UserError when no file could be ingested (every one skipped), when no media file was
    found, or for a bad path, label file or store. With workers > 1 the calling script needs
    the usual `if __name__ == "__main__":` guard of multiprocessing.
    """
    paths, labels_csv, workers = settings.paths, settings.labels_csv, settings.workers
    chunk_windows = settings.chunk_windows

    console = console or Console(stderr=True)
    started = _now()
    if workers < 1:
        raise UserError(f"--workers must be at least 1, not {workers}.")
    store = Path(settings.store).absolute()

    # Find the files and read the labels first: a typo fails before any work.
    labels = read_labels_csv(labels_csv) if labels_csv is not None else None
    unreadable: list[tuple[str, str]] = []
    files = find_media(paths, exclude=store, on_skip=lambda f, why: unreadable.append((f, why)))
    if not files:
        names = ", ".join(sorted(_media_extensions()))
        shown = " ".join(_shown(p) for p in paths)
        raise UserError(f"no media files ({names}) under {shown}; give media files or folders.")

    with StoreWriter(store, frontend_parameters(), chunk_windows) as writer:
        stored = writer.stored_media
        tally = _Tally(writer, dict(zip(stored["media_id"], stored["media_path"], strict=True)))

        # Files stored from the same path with the same size and mtime need no hashing.
        unchanged = {
            (path, int(size), int(mtime)): media_id
            for path, size, mtime, media_id in zip(
                stored["media_path"],
                stored["size"],
                stored["mtime_ns"],
                stored["media_id"],
                strict=True,
            )
        }
        for folder, reason in unreadable:
            _say(console, tally.skip(folder, reason))
        todo: list[str] = []
        for path in map(str, files):
            try:
                path.encode("utf-8")
            except UnicodeEncodeError:
                _say(console, tally.skip(path, "file name is not valid UTF-8; rename the file"))
                continue
            try:
                file_stat = os.stat(path)
            except OSError:
                todo.append(path)  # examine() says why it cannot be read
                continue
            media_id = unchanged.get((path, file_stat.st_size, file_stat.st_mtime_ns))
            if media_id is not None:
                tally.found(path, media_id)
            else:
                todo.append(path)

        # Decode in parallel, store in order; the bar advances by bytes, so its ETA holds for
        # files of any length.
        with FilesProgress("ingest", todo, console) as progress:
            known_ids = frozenset(stored["media_id"])
            for outcome in outcomes(todo, known_ids, workers, writer):
                before = tally.windows
                line = tally.take(outcome)
                if line is not None:
                    _say(progress.console, line)
                progress.file_done(outcome.path, tally.windows - before)
        writer.flush()

        # Labels, then the report: both under the write lock.
        if labels is not None:
            _attach_labels(store, labels, tally.in_store, console)
        record_run(
            store,
            {
                "started": started,
                "finished": _now(),
                "paths": [_shown(Path(p).absolute()) for p in paths],
                "files": len(files),
                "ingested": len(tally.ingested_paths),
                "already_in_store": tally.already,
                "duplicates": tally.duplicates,
                "skipped": len(tally.skips),
                "stored_with_warnings": tally.warned,
                "windows_added": writer.windows_added,
                "chunks_added": writer.chunks_added,
                "settings": settings.record()["settings"],
            },
            tally.skips,
            now_in_store=tally.in_store,
            warnings=tally.warnings,
            ingested=tally.ingested_paths,
        )

    _say(
        console,
        f"{len(files)} files: {len(tally.ingested_paths)} ingested ({tally.windows} windows), "
        f"{tally.already} already in the store, {tally.duplicates} duplicate content, "
        f"{len(tally.skips)} skipped"
        + (f", {tally.warned} ingested with warnings" if tally.warned else "")
        + f"; store {_shown(store)}",
    )
    if not tally.in_store:
        raise UserError(
            f"none of the {len(files)} media files could be ingested; the reasons are in "
            f"{_shown(store / REPORT_FILE)}."
        )
    return 0


def _attach_labels(
    store: Path, labels: LabelsCsv, in_store: dict[str, str], console: Console
) -> int:
    """Match a labels CSV to the store's media and merge the labels (caller holds the lock);
    returns how many media the CSV matched."""
    stored = read_stored_media(store)
    known_paths = dict(zip(stored["media_path"], stored["media_id"], strict=True))
    known_paths.update(in_store)
    match = match_labels(labels, known_paths, set(stored["media_id"]))
    added = merge_labels(store, match.labels)
    n_labels = sum(len(v) for v in match.labels.values())
    _say(
        console,
        f"labels: {n_labels} labels on {len(match.labels)} media from {_shown(labels.source)} "
        f"({added} new)",
    )
    if match.unmatched:
        first = "; ".join(_shown(p) for p, _ in match.unmatched[:UNMATCHED_SHOWN])
        _say(
            console,
            f"labels: {len(match.unmatched)} rows name files that are not in the store, "
            f"e.g. {first}",
        )
    if labels.blank_lines:
        lines = ", ".join(map(str, labels.blank_lines[:UNMATCHED_SHOWN]))
        _say(
            console,
            f"labels: {len(labels.blank_lines)} rows without a path or label ignored "
            f"(lines {lines})",
        )
    return len(match.labels)


def add_labels(store: Path, labels_csv: Path, console: Console | None = None) -> None:
    """Attach the clip-level labels of a `path,label` CSV to media already in the store."""
    console = console or Console(stderr=True)
    store = Path(store)
    if not store.is_dir():
        raise UserError(f"no feature store at {_shown(store)}; create one with `coincide ingest`.")
    read_header(store)
    labels = read_labels_csv(labels_csv)
    with store_lock(store):
        matched = _attach_labels(store, labels, {}, console)
    if labels.rows and not matched:
        raise UserError(
            f"none of the {len(labels.rows)} rows of {_shown(labels_csv)} names a file in "
            f"{_shown(store)}; give the paths the media were ingested from (or copies of them)."
        )


def info(store: Path, console: Console | None = None) -> None:
    """Print what a store holds: media, skips, windows, frames, hours, chunks, labels per class."""
    console = console or Console()
    store = Path(store)
    if not store.is_dir():
        raise UserError(f"no feature store at {_shown(store)}; create one with `coincide ingest`.")
    features = open_store(store)
    media = features.media
    report = read_report(store)

    summary = Table(title=f"feature store {_shown(store)}", show_header=False)
    summary.add_column("what")
    summary.add_column("count", justify="right")
    summary.add_row("media ok", str(len(media)))
    summary.add_row("media with video", str(int(media["has_video"].sum()) if len(media) else 0))
    summary.add_row("media skipped", str(len(report.get("skipped", []))))
    summary.add_row("windows", str(len(features)))
    summary.add_row("windows with frames", str(int(features.index["has_frame"].sum())))
    hours = float(media["duration_s"].sum()) / 3600 if len(media) else 0.0
    summary.add_row("hours", f"{hours:.3f}")
    summary.add_row("chunks", str(len(features.chunk_ids())))
    labeled = int((media["labels"].map(len) > 0).sum()) if len(media) else 0
    summary.add_row("media with labels", str(labeled))
    print_table(summary, console)

    counts: dict[str, list[int]] = {}
    for labels, n_windows in zip(media["labels"], media["n_windows"], strict=True):
        for label in labels:
            media_count, window_count = counts.setdefault(label, [0, 0])
            counts[label] = [media_count + 1, window_count + int(n_windows)]
    if counts:
        per_class = Table(title="labels per class")
        per_class.add_column("label")
        per_class.add_column("media", justify="right")
        per_class.add_column("windows", justify="right")
        for label, (media_count, window_count) in sorted(counts.items()):
            per_class.add_row(label, str(media_count), str(window_count))
        print_table(per_class, console)
