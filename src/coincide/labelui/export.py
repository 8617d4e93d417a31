"""`coincide labels export RUN --format csv|json`: a session's answers and the window labels they
propagate, for people and other tools.

Two files in the `--out` folder (default `RUN/labels/<session>/`, next to `propagated.parquet`):

- `answers.csv|json`: every request of the session in order, with its current answer: session,
  position, cluster_id, cluster_size, window_index, media_path, time_s, state, kind, labels,
  annotator, answered_at (ISO 8601, UTC). Pending requests have empty answer fields.
- `windows.csv|json`: the propagated labels, by `coincide.labeling.sessions.propagate_answers`
  (the rule `coincide finetune` trains with: a `label` answer gives its labels to every window
  of its cluster; `skip`, `unsure` and `mixed` give none): window_index, media_path, time_s,
  cluster_id, labels.

CSV is long ("tidy"), as the labels CSVs `coincide ingest` reads: one row per label, so a label
may hold any character (commas, `;`); an answer without labels is one row with an empty label.
JSON is a list of objects with `labels` as a list.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from coincide.errors import UserError
from coincide.files import atomic_path
from coincide.labeling.sessions import labels_dir
from coincide.labelui.campaign import find_session, session_assignment
from coincide.store.features import open_store
from coincide.store.labels import Session, label_store_path
from coincide.store.labels_sqlite import SQLiteLabelStore

# The table formats (`labels export --format label-studio` is coincide.labelui.label_studio_export).
Format = Literal["csv", "json"]

ANSWER_COLUMNS = [
    "session",
    "position",
    "cluster_id",
    "cluster_size",
    "window_index",
    "media_path",
    "time_s",
    "state",
    "kind",
    "labels",
    "annotator",
    "answered_at",
]
WINDOW_COLUMNS = ["window_index", "media_path", "time_s", "cluster_id", "labels"]


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts: numpy scalars to Python, missing values to None."""
    rows = []
    for row in frame.to_dict(orient="records"):
        clean: dict[str, Any] = {}
        for key, value in row.items():
            if isinstance(value, list):
                clean[key] = value
            elif value is None or (not isinstance(value, str) and pd.isna(value)):
                clean[key] = None
            elif isinstance(value, np.generic):
                clean[key] = value.item()
            else:
                clean[key] = value
        rows.append(clean)
    return rows


def _long(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per label (`labels` -> `label`); a row without labels keeps one empty label."""
    out = frame.copy()
    out["labels"] = [list(labels) if labels else [""] for labels in out["labels"]]
    out = out.explode("labels", ignore_index=True).rename(columns={"labels": "label"})
    return out


def _write_atomic(path: Path, write: Any) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def write_table(frame: pd.DataFrame, path: Path, fmt: Format) -> Path:
    """Write a table with a `labels` list column as long CSV or as a JSON list of objects."""
    if fmt == "csv":
        _write_atomic(path, lambda p: _long(frame).to_csv(p, index=False))
    else:
        text = json.dumps(_records(frame), indent=1, ensure_ascii=False) + "\n"
        _write_atomic(path, lambda p: Path(p).write_text(text, encoding="utf-8"))
    return path


def session_tables(
    labels: SQLiteLabelStore, session: Session, run_dir: Path, store_path: Path
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The answers table and the propagated window-labels table of a session (see the module
    docstring for the columns); `labels` cells are lists of strings."""
    from coincide.labeling.clusters import ClusterMembers
    from coincide.labeling.sessions import session_labels

    store = open_store(store_path)
    assignment = session_assignment(run_dir, store, session)
    sizes = np.bincount(assignment, minlength=1)
    index = store.index
    paths = index["media_path"].to_numpy()
    times = index["time_s"].to_numpy(dtype=np.float64)

    answers = labels.export(session.id)
    windows = answers["window_index"].to_numpy(dtype=np.int64)
    answers["cluster_size"] = sizes[answers["cluster_id"].to_numpy(dtype=np.int64)]
    answers["media_path"] = paths[windows]
    answers["time_s"] = times[windows]
    answers["labels"] = [list(x) if isinstance(x, list) else [] for x in answers["labels"]]
    answers["answered_at"] = [
        None if pd.isna(t) else pd.Timestamp(t).isoformat() for t in answers["answered_at"]
    ]

    members = None if session.strategy == "random" else ClusterMembers(assignment)
    propagated = session_labels(labels, session, None, members)
    labeled = propagated["window_index"].to_numpy(dtype=np.int64)
    propagated["media_path"] = paths[labeled]
    propagated["time_s"] = times[labeled]
    return answers[ANSWER_COLUMNS], propagated[WINDOW_COLUMNS]


def label_store_file(run_dir: Path, db: Path | None) -> Path:
    """The label store a `coincide labels` command reads (`--db`, default RUN/labels.sqlite);
    UserError when it does not exist."""
    db_path = label_store_path(run_dir, db)
    if not db_path.is_file():
        raise UserError(
            f"no label store at {db_path}; label with `coincide label {run_dir} ...` first, "
            "or pass --db."
        )
    return db_path


def run(
    run_dir: Path,
    fmt: str = "csv",
    session: str | None = None,
    db: Path | None = None,
    store: Path | None = None,
    out: Path | None = None,
) -> list[Path]:
    """The `coincide labels export` command; returns the two files written."""
    chosen_format: Format = "csv" if fmt == "csv" else "json"
    run_dir = Path(run_dir)
    with SQLiteLabelStore(label_store_file(run_dir, db)) as labels:
        chosen = find_session(labels, session)
        store_path = Path(store) if store is not None else Path(chosen.store)
        answers, windows = session_tables(labels, chosen, run_dir, store_path)
    folder = Path(out) if out is not None else labels_dir(run_dir, chosen.name)
    folder.mkdir(parents=True, exist_ok=True)
    written = [
        write_table(answers, folder / f"answers.{fmt}", chosen_format),
        write_table(windows, folder / f"windows.{fmt}", chosen_format),
    ]
    answered = int((answers["state"] == "answered").sum())
    print(
        f"session {chosen.name!r}: {answered} of {len(answers)} requests answered, "
        f"{len(windows)} windows labeled; wrote {written[0]} and {written[1]}"
    )
    return written
