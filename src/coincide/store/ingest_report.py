"""`STORE/ingest_report.json`: the files ingestion skipped (and why), the files it stored with a
warning, and the counts of each run.

```json
{"skipped": [{"path": "...", "reason": "no audio stream", "time": "2025-...Z"}, ...],
 "warnings": [{"path": "...", "media_id": "...", "warning": "truncated: ...", "time": "..."}],
 "runs": [{"started": "...", "finished": "...", "files": 12, "ingested": 10, ...}, ...]}
```
`skipped` holds every file skipped by any run that is still not in the store: a file skipped
once and ingested later (after the user fixed it) leaves the list. `warnings` holds what was
wrong with stored files that decoded only in part (cut short, undecodable packets); a path
stored again by a later run keeps only that run's warnings.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from coincide.errors import UserError
from coincide.files import write_json_atomic
from coincide.store.layout import REPORT_FILE


@dataclass
class Skip:
    """A file that was not ingested: its path, why, and when (ISO 8601, UTC)."""

    path: str
    reason: str
    time: str


@dataclass
class MediaWarning:
    """A file stored though damaged: its path, content hash, what was wrong, and when."""

    path: str
    media_id: str
    warning: str
    time: str


def read_report(root: Path) -> dict[str, Any]:
    """The report of a store ({"skipped": [], "warnings": [], "runs": []} before the first run)."""
    path = Path(root) / REPORT_FILE
    if not path.is_file():
        return {"skipped": [], "warnings": [], "runs": []}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path} ({err}); delete it and ingest again.") from err


def record_run(
    root: Path,
    run: dict[str, Any],
    skips: Iterable[Skip],
    now_in_store: Iterable[str],
    warnings: Iterable[MediaWarning] = (),
    ingested: Iterable[str] = (),
) -> None:
    """Append one run's counts and merge its skips (by path; newest reason wins) and warnings.

    now_in_store: paths this run found in the store or added to it; they leave the skip list.
    ingested: paths this run stored; their earlier warnings are replaced by `warnings`.
    The caller must hold the store's write lock.
    """
    report = read_report(root)
    skipped = {entry["path"]: entry for entry in report.get("skipped", [])}
    for path in now_in_store:
        skipped.pop(path, None)
    for skip in skips:
        skipped[skip.path] = asdict(skip)
    report["skipped"] = sorted(skipped.values(), key=lambda entry: entry["path"])
    stored_again = set(ingested)
    kept = [entry for entry in report.get("warnings", []) if entry["path"] not in stored_again]
    report["warnings"] = sorted(
        [*kept, *map(asdict, warnings)], key=lambda entry: (entry["path"], entry["time"])
    )
    report["runs"] = [*report.get("runs", []), run]
    write_json_atomic(Path(root) / REPORT_FILE, report, sort_keys=True, durable=True)
