"""`coincide labels export RUN --format label-studio`: a labeling session as Label Studio tasks.

Written into `--out` (default `RUN/labels/<session>/label-studio/`):

- `audio/cluster<C>-window<W>.wav`: for every request of the session, the clip of its member
  window with `--context` seconds around it (2 s, as the labeling page plays it), decoded from
  the ingested media file, 16 kHz mono 16-bit;
- `tasks.json`: one task per request (format in `label_studio`). `data.audio` is the clip as
  Label Studio serves local files, `/data/local-files/?d=<path below the document root>`;
  `data` also has the window's place in the clip (`window_start_s`, `window_end_s`), the
  media name and time, and the cluster size. Predictions, shown as pre-annotations:
  the request's current answer in the label store (model_version `coincide label store`, so
  that a person can review the oracle's or another annotator's labels), and with `--model` the
  fine-tuned classifier's labels for the window (`coincide classifier <name>`, scored with the
  class score, the labels chosen as `coincide predict` chooses them);
- `label_config.xml`: the labeling config the tasks need (the known labels as choices: those
  of the answers, the predictions and `--vocab`).

Label Studio then needs `LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`,
`LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<document root>` (default: the output folder) and a
"Local files" source storage at `<out>/audio` (not synced); the command prints these.
A request whose media file is gone or changed since ingest is left out, with one line saying so.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import numpy as np

from coincide.errors import MediaError, UserError
from coincide.files import write_bytes_atomic
from coincide.labeling.sessions import labels_dir
from coincide.labelui import clips
from coincide.labelui import label_studio as fmt
from coincide.labelui.campaign import Campaign, MediaUnavailable, find_session, session_assignment
from coincide.labelui.export import label_store_file
from coincide.labelui.vocab import load_vocabulary
from coincide.store.features import open_store
from coincide.store.labels import Answer
from coincide.store.labels_sqlite import SQLiteLabelStore

STORE_MODEL_VERSION = "coincide label store"
AUDIO_DIR = "audio"


def _audio_url(path: Path, document_root: Path) -> str:
    relative = path.resolve().relative_to(document_root.resolve()).as_posix()
    return fmt.LOCAL_FILES_PREFIX + quote(relative, safe="/")


def classifier_predictions(model_path: Path, logmel: np.ndarray) -> tuple[str, list[dict]]:
    """(model_version, per window {labels, score}) from a fine-tuned classifier (a run, a
    fine-tuning checkpoint or an exported folder, as `coincide predict` takes) over log-mel
    windows `(n, 64, 96)`. The labels are those `coincide predict` gives by default (the best
    class, or every class scoring >= 0.5 for a multi-label classifier); the score is the best
    class score."""
    from coincide.models.inference import LabelRule, load_model

    model = load_model(model_path)
    model.require_classifier()
    scores = model.score_logmel(logmel)
    rule = LabelRule.for_model(model, None, None)
    chosen = rule.labels(scores, model.classes)
    version = f"coincide classifier {Path(str(model.source or model_path)).name}"
    return version, [
        {"labels": labels, "score": float(row.max())}
        for labels, row in zip(chosen, scores, strict=True)
    ]


def run(
    run_dir: Path,
    session: str | None = None,
    db: Path | None = None,
    store: Path | None = None,
    out: Path | None = None,
    *,
    model: Path | None = None,
    vocab: Path | None = None,
    context_s: float = 2.0,
    document_root: Path | None = None,
) -> list[Path]:
    """Write the session's tasks, clips and labeling config; returns tasks.json and the config."""
    if not context_s >= 0:
        raise UserError(f"--context must be 0 or more seconds, not {context_s}.")
    run_dir = Path(run_dir)
    db_path = label_store_file(run_dir, db)
    vocabulary = load_vocabulary(vocab)
    with SQLiteLabelStore(db_path) as labels:
        chosen = find_session(labels, session)
        features = open_store(Path(store) if store is not None else Path(chosen.store))
        assignment = session_assignment(run_dir, features, chosen)
        campaign = Campaign(labels, chosen, features, assignment, context_s=context_s)
        requests = labels.requests(chosen.id)
        current: dict[int, Answer] = {a.cluster_id: a for a in labels.answers(chosen.id)}

    folder = Path(out) if out is not None else labels_dir(run_dir, chosen.name) / "label-studio"
    root = Path(document_root) if document_root is not None else folder
    if not folder.resolve().is_relative_to(root.resolve()):
        raise UserError(
            f"--document-root {root} does not hold the output folder {folder}; Label Studio "
            "serves local files only from below its document root."
        )
    audio_dir = folder / AUDIO_DIR
    audio_dir.mkdir(parents=True, exist_ok=True)

    predicted: list[dict] | None = None
    version = ""
    if model is not None:
        windows = np.array([r.window_index for r in requests], dtype=np.int64)
        version, predicted = classifier_predictions(Path(model), features.logmel[windows])

    tasks, skipped = [], []
    for k, request in enumerate(requests):
        member = campaign.member(request.window_index, check=False)
        try:
            samples = clips.decode_span(campaign.media_file(member), member.span)
        except (MediaUnavailable, MediaError) as err:
            skipped.append(f"cluster {request.cluster_id} (window {request.window_index}): {err}")
            continue
        wav = audio_dir / f"cluster{request.cluster_id}-window{request.window_index}.wav"
        write_bytes_atomic(wav, clips.wav_bytes(samples))
        span = member.span
        task_predictions = []
        answer = current.get(request.cluster_id)
        if answer is not None:
            key = f"c{request.cluster_id}-store"
            made = fmt.prediction(key, STORE_MODEL_VERSION, answer.labels, answer.kind, None)
            if made is not None:
                task_predictions.append(made)
        if predicted is not None:
            guess = predicted[k]
            key = f"c{request.cluster_id}-model"
            made = fmt.prediction(key, version, guess["labels"], "label", guess["score"])
            if made is not None:
                task_predictions.append(made)
        data = {
            fmt.AUDIO: _audio_url(wav, root),
            "coincide_session": chosen.name,
            "cluster_id": request.cluster_id,
            "window": request.window_index,
            "cluster_size": campaign.cluster_size(request.cluster_id),
            "media_name": member.media_name,
            "time_s": member.time_s,
            "window_start_s": round(span.window_start_s - span.start_s, 3),
            "window_end_s": round(span.window_end_s - span.start_s, 3),
        }
        tasks.append({"data": data, "predictions": task_predictions})

    offered = [label for a in current.values() for label in a.labels]
    offered += [label for task in tasks for p in task["predictions"] for label in _choices(p)]
    offered += [term.name for term in vocabulary.terms]
    written = [folder / "tasks.json", folder / "label_config.xml"]
    tasks_text = json.dumps(tasks, indent=1, ensure_ascii=False) + "\n"
    write_bytes_atomic(written[0], tasks_text.encode("utf-8"))
    config = fmt.label_config(list(dict.fromkeys(offered)))
    write_bytes_atomic(written[1], config.encode("utf-8"))

    for line in skipped:
        print(f"left out {line}")
    with_predictions = sum(bool(task["predictions"]) for task in tasks)
    print(
        f"session {chosen.name!r}: {len(tasks)} Label Studio tasks ({with_predictions} with "
        f"pre-annotations) and their clips in {folder}"
        + (f"; {len(skipped)} left out (media gone or changed)" if skipped else "")
    )
    print(
        "start Label Studio with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and "
        f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={root.resolve()}, add a Local files source "
        f"storage at {audio_dir.resolve()} (do not sync it), paste {written[1].name} as the "
        f"labeling config and import {written[0].name}."
    )
    return written


def _choices(made: dict) -> list[str]:
    return [
        value
        for item in made["result"]
        if item["from_name"] == fmt.LABELS
        for value in item["value"]["choices"]
    ]
