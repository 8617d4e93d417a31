"""Label Studio's formats, as coincide writes and reads them (no I/O here).

Written (`coincide labels export --format label-studio`, see `label_studio_export`):
- a labeling config (`label_config.xml`): the clip as `<Audio name="audio" value="$audio">`, a
  `<Choices name="labels" choice="multiple">` of the known labels, a `<TextArea
  name="new_labels">` for labels not in that list (one per line), and a `<Choices
  name="answer">` offering `unsure` and `mixed` (the page's answer kinds; Label Studio's own
  Skip button is coincide's `skip`);
- tasks in Label Studio's basic JSON format: `{"data": {...}, "predictions": [...]}`, one per
  request of the labeling session. `data.audio` is the clip's URL; `data` also carries the
  request (`coincide_session`, `cluster_id`, `window`), which the import needs back. Each
  prediction is `{"model_version", "score"?, "result": [{"id", "from_name", "to_name", "type",
  "value"}]}`, the form Label Studio shows as a pre-annotation.

Read (`coincide labels import`, see `label_studio_import`): Label Studio's JSON export, a list
of tasks whose `annotations` each have `id`, `result`, `was_cancelled`, `completed_by` (a user
id, or `{id, email, ...}` when exported with annotator details), `created_at`, `updated_at`.
Results of type `choices` (except the `answer` control), `taxonomy` (the last level of each
path), `textarea` (one label per line) and `labels` give labels, so a project with another
config of those tags imports too.

Formats as documented by Label Studio: "Get data into Label Studio" (basic JSON format, local
files under `/data/local-files/?d=`), "Import pre-annotated data" and "Export annotations".
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

AUDIO = "audio"  # the <Audio> object tag, and the task data key of the clip's URL
LABELS = "labels"  # <Choices> of the known labels
NEW_LABELS = "new_labels"  # <TextArea>: labels not offered, one per line
ANSWER = "answer"  # <Choices>: unsure / mixed (nothing chosen: a plain answer)
ANSWER_CHOICES = ("unsure", "mixed")
LOCAL_FILES_PREFIX = "/data/local-files/?d="


def label_config(labels: Sequence[str]) -> str:
    """The labeling config (XML) for the tasks coincide writes, offering `labels` as choices."""
    view = ElementTree.Element("View")
    ElementTree.SubElement(
        view,
        "Header",
        value="Cluster $cluster_id ($cluster_size windows): label the sound from "
        "$window_start_s s to $window_end_s s of this clip",
    )
    ElementTree.SubElement(view, "Audio", name=AUDIO, value="$" + AUDIO)
    if labels:
        choices = ElementTree.SubElement(
            view, "Choices", name=LABELS, toName=AUDIO, choice="multiple", showInline="true"
        )
        for label in labels:
            ElementTree.SubElement(choices, "Choice", value=label)
    ElementTree.SubElement(
        view,
        "TextArea",
        name=NEW_LABELS,
        toName=AUDIO,
        placeholder="other labels, one per line",
        rows="2",
        editable="true",
    )
    answer = ElementTree.SubElement(
        view, "Choices", name=ANSWER, toName=AUDIO, choice="single", showInline="true"
    )
    for kind in ANSWER_CHOICES:
        ElementTree.SubElement(answer, "Choice", value=kind)
    ElementTree.indent(view)
    return ElementTree.tostring(view, encoding="unicode") + "\n"


def prediction(
    key: str, model_version: str, labels: Sequence[str], kind: str, score: float | None
) -> dict[str, Any] | None:
    """A pre-annotation giving `labels` (as choices) and, for unsure / mixed, the answer kind;
    None when it would say nothing (a skip). `key` makes the result ids unique."""
    result: list[dict[str, Any]] = []
    if labels:
        result.append(_choices(f"{key}-labels", LABELS, list(labels)))
    if kind in ANSWER_CHOICES:
        result.append(_choices(f"{key}-answer", ANSWER, [kind]))
    if not result:
        return None
    made: dict[str, Any] = {"model_version": model_version, "result": result}
    if score is not None:
        made["score"] = round(float(score), 6)
    return made


def _choices(result_id: str, control: str, values: list[str]) -> dict[str, Any]:
    return {
        "id": result_id,
        "from_name": control,
        "to_name": AUDIO,
        "type": "choices",
        "value": {"choices": values},
    }


# ---------------------------------------------------------------------------------------------
# Reading an export


class FormatError(ValueError):
    """A task or annotation that is not in Label Studio's export format; the message says why."""


@dataclass(frozen=True)
class Annotated:
    """One Label Studio annotation as a coincide answer, with where it came from."""

    session: str | None  # the task's coincide_session (None: not a task coincide wrote)
    cluster_id: int
    window: int
    kind: str
    labels: tuple[str, ...]
    annotator: str
    project: Any
    task_id: Any
    annotation_id: Any
    created_at: str | None
    updated_at: str | None
    lead_time: float | None

    @property
    def key(self) -> str:
        """Who gave this answer in Label Studio, and in which version: the same annotation
        imported twice has the same key; an annotation edited later (`updated_at`) a new one.
        It holds ':', which no labeling page's owner key may, so no page can undo it."""
        return (
            f"label-studio:{self.project}:{self.task_id}:{self.annotation_id}:"
            f"{self.updated_at or self.created_at or ''}"
        )


def annotator_name(completed_by: Any) -> str:
    """The annotator as coincide records it: `label-studio:` and the user's email when the
    export has annotator details, else Label Studio's user id."""
    if isinstance(completed_by, dict):
        email = completed_by.get("email")
        if isinstance(email, str) and email.strip():
            return "label-studio:" + email.strip()
        completed_by = completed_by.get("id")
    if isinstance(completed_by, int | str) and str(completed_by).strip():
        return f"label-studio:user-{completed_by}"
    return "label-studio:unknown"


def _labels_of(results: Iterable[Any]) -> tuple[list[str], str | None]:
    """(labels in the order given, the answer kind chosen in the `answer` control or None)."""
    labels: list[str] = []
    kind = None
    for item in results:
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            raise FormatError("a result is not an object with a 'value'")
        value, tag = item["value"], item.get("type")
        if tag == "choices" and item.get("from_name") == ANSWER:
            chosen = [c for c in value.get("choices", []) if c in ANSWER_CHOICES]
            kind = chosen[0] if chosen else None
        elif tag in ("choices", "labels"):
            labels += _strings(value.get(tag, []), tag)
        elif tag == "taxonomy":
            paths = value.get("taxonomy", [])
            if not isinstance(paths, list) or not all(isinstance(p, list) and p for p in paths):
                raise FormatError("a taxonomy result is not a list of paths")
            labels += _strings([path[-1] for path in paths], "taxonomy")
        elif tag == "textarea":
            lines = [
                line for text in _strings(value.get("text", []), tag) for line in text.split("\n")
            ]
            labels += [line for line in (" ".join(x.split()) for x in lines) if line]
    return list(dict.fromkeys(labels)), kind


def _strings(values: Any, tag: str) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise FormatError(f"a {tag} result does not hold a list of strings")
    return values


def _int(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormatError(f"its data has no integer '{name}' (not a task coincide exported)")
    return value


def read_task(task: Any) -> list[Annotated]:
    """The annotations of one exported task as answers, oldest first. FormatError for a task
    that is not Label Studio's format or was not written by coincide; an annotation without
    any label, answer kind or skip is left out (nothing to record)."""
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise FormatError("it is not an object with 'data'")
    data = task["data"]
    session = data.get("coincide_session")
    cluster_id, window = _int(data, "cluster_id"), _int(data, "window")
    annotations = task.get("annotations", [])
    if not isinstance(annotations, list):
        raise FormatError("its 'annotations' is not a list")
    answers = []
    for annotation in annotations:
        if not isinstance(annotation, dict) or not isinstance(annotation.get("result", []), list):
            raise FormatError("an annotation is not an object with a 'result' list")
        labels, kind = _labels_of(annotation.get("result", []))
        if annotation.get("was_cancelled"):
            kind, labels = "skip", []  # Label Studio's Skip
        elif kind is None:
            if not labels:
                continue
            kind = "label"
        lead_time = annotation.get("lead_time")
        answers.append(
            Annotated(
                session=session if isinstance(session, str) else None,
                cluster_id=cluster_id,
                window=window,
                kind=kind,
                labels=tuple(labels),
                annotator=annotator_name(annotation.get("completed_by")),
                project=task.get("project", annotation.get("project")),
                task_id=task.get("id", annotation.get("task")),
                annotation_id=annotation.get("id"),
                created_at=_text(annotation.get("created_at")),
                updated_at=_text(annotation.get("updated_at")),
                lead_time=float(lead_time) if isinstance(lead_time, int | float) else None,
            )
        )
    answers.sort(key=lambda a: (a.updated_at or a.created_at or "", str(a.annotation_id)))
    return answers


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
