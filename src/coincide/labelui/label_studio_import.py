"""`coincide labels import RUN EXPORT.json`: Label Studio's annotations into the label store.

EXPORT.json is Label Studio's JSON export of a project whose tasks came from `coincide labels
export --format label-studio` (their `data` names the session, cluster and window). Every
annotation becomes an answer of the session, written through the label store like any other:

- a label answer with the annotation's labels, `unsure` / `mixed` when chosen in the `answer`
  control, `skip` when it was skipped in Label Studio; the annotator is `label-studio:<email>`
  (or `label-studio:user-<id>` when the export has no annotator details);
- answers are only ever added: an imported answer to a cluster answered before becomes the
  current one, and the earlier answer stays in the store's history (undo brings it back);
- provenance: each answer is given with the key `label-studio:<project>:<task>:<annotation>:
  <updated_at>` (stored as a digest, see `LabelStore.answer`), so importing the same export
  again adds nothing, while an annotation edited in Label Studio since comes in as a newer
  answer; and a line per imported answer is appended to `<label store>.imports.jsonl` (JSON:
  the key, the answer id, session, cluster, window, kind, labels, annotator, Label Studio's
  project, task and annotation ids and times, the export file and its SHA-256, the import
  time; an import stopped between an answer and its line writes the line the next time).

Tasks that are not coincide's, or name another session, a cluster the session did not ask, or
another window, are left out with one line each; nothing is written for them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from coincide.errors import UserError
from coincide.labelui.campaign import find_session
from coincide.labelui.export import label_store_file
from coincide.labelui.label_studio import Annotated, FormatError, read_task
from coincide.store.labels import AnswerKind, owner_digest
from coincide.store.labels_sqlite import SQLiteLabelStore

LOG_SUFFIX = ".imports.jsonl"


@dataclass
class ImportSummary:
    """What an import did: answers added, annotations already in the store, tasks left out."""

    session: str
    imported: int = 0
    already: int = 0
    replaced: int = 0  # imported answers to clusters that had a current answer before
    left_out: list[str] = field(default_factory=list)
    log: Path | None = None


def log_path(db_path: Path) -> Path:
    """Where the provenance of imported answers is kept: next to the label store."""
    return db_path.with_name(db_path.stem + LOG_SUFFIX)


def _read_export(path: Path) -> tuple[list[Any], str]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as err:
        raise UserError(f"{path} does not exist; give Label Studio's JSON export.") from err
    except OSError as err:
        raise UserError(f"cannot read {path} ({err.strerror}).") from err
    try:
        tasks = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise UserError(
            f"{path} is not JSON ({err}); export the project from Label Studio as JSON."
        ) from err
    if not isinstance(tasks, list):
        raise UserError(
            f"{path} is not a list of tasks; export the project from Label Studio as JSON "
            "(not JSON_MIN or CSV)."
        )
    return tasks, hashlib.sha256(raw).hexdigest()


def _logged_keys(log: Path) -> set[str]:
    """The provenance keys the import log holds already."""
    if not log.is_file():
        return set()
    keys = set()
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            keys.add(json.loads(line)["key"])
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a crash: its answer is logged again
    return keys


def _append(log: Path, record: dict[str, Any]) -> None:
    with open(log, "a", encoding="utf-8") as out:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        out.flush()
        os.fsync(out.fileno())


def run(
    run_dir: Path, export: Path, session: str | None = None, db: Path | None = None
) -> ImportSummary:
    """Import Label Studio's JSON export `export` into the session's label store."""
    run_dir, export = Path(run_dir), Path(export)
    db_path = label_store_file(run_dir, db)
    tasks, sha256 = _read_export(export)
    log = log_path(db_path)
    with SQLiteLabelStore(db_path) as labels:
        chosen = find_session(labels, session)
        summary = ImportSummary(chosen.name, log=log)
        asked = {r.cluster_id: r.window_index for r in labels.requests(chosen.id)}
        given = {a.given_by: a.id for a in labels.history(chosen.id)}
        logged = _logged_keys(log)
        answered = {a.cluster_id for a in labels.answers(chosen.id)}
        for position, task in enumerate(tasks):
            name = (
                f"task {task.get('id', position + 1) if isinstance(task, dict) else position + 1}"
            )
            try:
                annotations = read_task(task)
            except FormatError as err:
                summary.left_out.append(f"{name}: {err}")
                continue
            for annotation in annotations:
                problem = _mismatch(annotation, chosen.name, asked)
                if problem:
                    summary.left_out.append(f"{name}: {problem}")
                    break
                known = given.get(owner_digest(annotation.key))
                if known is not None:
                    summary.already += 1
                    if annotation.key not in logged:  # stopped between the answer and its line
                        _append(log, _provenance(known, chosen.name, annotation, export, sha256))
                        logged.add(annotation.key)
                    continue
                try:
                    answer = labels.answer(
                        chosen.id,
                        annotation.cluster_id,
                        annotation.window,
                        list(annotation.labels),
                        cast(AnswerKind, annotation.kind),
                        annotation.annotator,
                        owner=annotation.key,
                    )
                except UserError as err:
                    summary.left_out.append(f"{name}, annotation {annotation.annotation_id}: {err}")
                    continue
                given[answer.given_by] = answer.id
                summary.imported += 1
                summary.replaced += annotation.cluster_id in answered
                answered.add(annotation.cluster_id)
                _append(log, _provenance(answer.id, chosen.name, annotation, export, sha256))
                logged.add(annotation.key)
    _report(summary, export)
    return summary


def _mismatch(annotation: Annotated, session: str, asked: dict[int, int]) -> str | None:
    """Why an annotation cannot answer a request of `session`, or None when it can."""
    if annotation.session is None:
        return "its data has no coincide_session (not a task coincide exported)"
    if annotation.session != session:
        return f"it belongs to session {annotation.session!r}, not {session!r} (pass --session)"
    if annotation.cluster_id not in asked:
        return f"session {session!r} never asked for cluster {annotation.cluster_id}"
    if asked[annotation.cluster_id] != annotation.window:
        return (
            f"cluster {annotation.cluster_id} is shown through window "
            f"{asked[annotation.cluster_id]} in this session, not {annotation.window}"
        )
    return None


def _provenance(
    answer_id: int, session: str, annotation: Annotated, export: Path, sha256: str
) -> dict[str, Any]:
    return {
        "key": annotation.key,
        "answer_id": answer_id,
        "session": session,
        "cluster_id": annotation.cluster_id,
        "window": annotation.window,
        "kind": annotation.kind,
        "labels": list(annotation.labels),
        "annotator": annotation.annotator,
        "label_studio": {
            "project": annotation.project,
            "task": annotation.task_id,
            "annotation": annotation.annotation_id,
            "created_at": annotation.created_at,
            "updated_at": annotation.updated_at,
            "lead_time_s": annotation.lead_time,
        },
        "export": str(export.resolve()),
        "export_sha256": sha256,
        "imported_at": datetime.now(UTC).isoformat(),
    }


def _report(summary: ImportSummary, export: Path) -> None:
    for line in summary.left_out:
        print(f"left out {line}")
    print(
        f"session {summary.session!r}: imported {summary.imported} answers from {export}"
        + (
            f" ({summary.replaced} to clusters answered before; those answers stay in the history)"
            if summary.replaced
            else ""
        )
        + (f"; {summary.already} were imported before" if summary.already else "")
        + (f"; {len(summary.left_out)} left out" if summary.left_out else "")
        + (f"; provenance in {summary.log}" if summary.imported else "")
    )
    if summary.imported:
        print(
            "run this session's `coincide label RUN --store STORE --budget N` again (without "
            "--oracle) to propagate them for `coincide finetune`."
        )
    if summary.imported == 0 and summary.already == 0 and summary.left_out:
        raise UserError(
            f"nothing in {export} answers a request of session {summary.session!r}; see the "
            "lines above."
        )
