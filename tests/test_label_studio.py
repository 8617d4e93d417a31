"""Label Studio interop: tasks with clips and pre-annotations out, annotations back in.

The labeling setup is the one of test_labelui_api (synthetic media whose second k sounds
`tone_hz(k)`, a hand-made clustering, a session of five requests). The Label Studio export read
back is written here in Label Studio's documented JSON export format ("Export annotations":
tasks with `annotations` holding `id`, `result`, `was_cancelled`, `completed_by`, times).
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from coincide.cli.commands import app as cli_app
from coincide.errors import UserError
from coincide.labelui import label_studio as fmt
from coincide.labelui.label_studio_export import classifier_predictions
from coincide.labelui.label_studio_import import log_path
from coincide.labelui.label_studio_import import run as import_run
from coincide.store.features import open_store
from coincide.store.labels_sqlite import SQLiteLabelStore

sys.path.insert(0, str(Path(__file__).parent))
import mediagen  # noqa: E402
from test_labelui_api import (  # noqa: E402
    REQUESTS,
    XSS,
    build_labeling_run,
    dominant_hz,
    wav_samples,
    write_media,
    write_ontology,
)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[Path]:
    return write_media(tmp_path_factory.mktemp("ls_media"))


@pytest.fixture
def setup(sources, tmp_path):
    return build_labeling_run(tmp_path / "labeling", sources)


def answer(setup, cluster_id: int, labels: list[str], kind: str = "label", who: str = "ann"):
    window = dict(REQUESTS)[cluster_id]
    with SQLiteLabelStore(setup.db) as store:
        session = store.get_session("cluster")
        return store.answer(session.id, cluster_id, window, labels, kind, who)


def cli(*args: str):
    result = CliRunner().invoke(cli_app, [str(a) for a in args])
    return result


def user_error(result) -> str:
    """The one sentence `coincide` ends with (its main() prints it and exits 2)."""
    assert isinstance(result.exception, UserError), result.output
    return str(result.exception)


def export_tasks(setup, out: Path, *extra: str) -> list[dict]:
    result = cli("labels", "export", setup.run, "--format", "label-studio", "--out", out, *extra)
    assert result.exit_code == 0, result.output
    return json.loads((out / "tasks.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# Export


def test_export_writes_clips_tasks_predictions_and_config(setup, tmp_path):
    answer(setup, 3, ["dog", XSS])
    answer(setup, 0, [], "skip")
    answer(setup, 4, ["cat"], "unsure")
    out = tmp_path / "ls"
    tasks = export_tasks(setup, out, "--vocab", write_ontology(tmp_path / "ontology.json"))

    # One task per request, in the session's order, naming the request and the clip.
    assert [(t["data"]["cluster_id"], t["data"]["window"]) for t in tasks] == REQUESTS
    first = tasks[0]["data"]
    assert first == {
        "audio": "/data/local-files/?d=audio/cluster3-window9.wav",
        "coincide_session": "cluster",
        "cluster_id": 3,
        "window": 9,
        "cluster_size": 3,
        "media_name": "tone.wav",
        "time_s": 3.0,
        "window_start_s": 2.0,
        "window_end_s": 2.96,
    }
    # The clip: window 9 is second 3 of tone.wav, 2 s of context each side (1 s to 5 s).
    samples, rate = wav_samples((out / "audio" / "cluster3-window9.wav").read_bytes())
    assert rate == 16000 and len(samples) / rate == pytest.approx(4.0, abs=0.02)
    at = 2 * rate
    assert dominant_hz(samples[at + 1600 : at + 14000], rate) == pytest.approx(
        mediagen.tone_hz(3), abs=15
    )
    assert dominant_hz(samples[at - 14000 : at - 1600], rate) == pytest.approx(
        mediagen.tone_hz(2), abs=15
    )
    assert sorted(p.name for p in (out / "audio").iterdir()) == sorted(
        f"cluster{c}-window{w}.wav" for c, w in REQUESTS
    )

    # Pre-annotations: the store's current answers (a skip says nothing); pending: none.
    store_version = {"model_version": "coincide label store"}
    assert tasks[0]["predictions"] == [
        {
            **store_version,
            "result": [
                {
                    "id": "c3-store-labels",
                    "from_name": "labels",
                    "to_name": "audio",
                    "type": "choices",
                    "value": {"choices": ["dog", XSS]},
                }
            ],
        }
    ]
    assert tasks[1]["predictions"] == []
    unsure = tasks[2]["predictions"][0]["result"]
    assert [(r["from_name"], r["value"]["choices"]) for r in unsure] == [
        ("labels", ["cat"]),
        ("answer", ["unsure"]),
    ]
    assert tasks[3]["predictions"] == tasks[4]["predictions"] == []

    # The labeling config offers every label of the answers and the vocabulary as a choice
    # (the hostile one as an attribute value, escaped), a text area and the answer kinds.
    config = ElementTree.fromstring((out / "label_config.xml").read_text(encoding="utf-8"))
    assert config.find("Audio").attrib == {"name": "audio", "value": "$audio"}
    labels = config.find("Choices[@name='labels']")
    assert [c.get("value") for c in labels] == [
        "dog",
        XSS,
        "cat",
        "Dog",
        "Bark",
        "Male speech, man speaking",
        "Human sounds",
    ]
    assert labels.get("choice") == "multiple" and labels.get("toName") == "audio"
    assert config.find("TextArea").get("name") == "new_labels"
    assert [c.get("value") for c in config.find("Choices[@name='answer']")] == ["unsure", "mixed"]
    assert "<img" not in (out / "label_config.xml").read_text(encoding="utf-8")


def test_export_leaves_out_a_request_whose_media_is_gone(setup, tmp_path):
    setup.media[0].unlink()  # clip one.mp4: windows 0-5, clusters 0 and 1
    result = cli(
        "labels", "export", setup.run, "--format", "label-studio", "--out", tmp_path / "ls"
    )
    assert result.exit_code == 0, result.output
    assert "left out cluster 0 (window 1): media file clip one.mp4 is gone" in result.output
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text(encoding="utf-8"))
    assert [t["data"]["cluster_id"] for t in tasks] == [3, 4, 5]


def test_export_document_root_and_bad_options(setup, tmp_path):
    out = tmp_path / "serve" / "coincide" / "ls"
    tasks = export_tasks(setup, out, "--document-root", tmp_path / "serve", "--context", "0")
    assert (
        tasks[0]["data"]["audio"] == "/data/local-files/?d=coincide/ls/audio/cluster3-window9.wav"
    )
    # No context: the clip is the window alone.
    samples, rate = wav_samples((out / "audio" / "cluster3-window9.wav").read_bytes())
    assert len(samples) / rate == pytest.approx(0.96, abs=0.02)
    assert tasks[0]["data"]["window_start_s"] == 0.0
    outside = cli(
        "labels", "export", setup.run, "--format", "label-studio", "--out", tmp_path / "x",
        "--document-root", tmp_path / "serve",
    )  # fmt: skip
    assert "does not hold the output folder" in user_error(outside)
    bad = cli("labels", "export", setup.run, "--format", "labelstudio")
    assert bad.exit_code == 2  # the parser refuses it, naming the choices
    assert "label-studio" in bad.output and "Traceback" not in bad.output


def test_classifier_predictions_are_the_labels_predict_gives(setup, tmp_path):
    from coincide.models.inference import load_model
    from inference_helpers import make_tiny_run

    tiny = make_tiny_run(tmp_path / "tiny")
    model = load_model(tiny.run, device="cpu")
    windows = np.array([w for _, w in REQUESTS])
    logmel = open_store(setup.store).logmel[windows]
    scores = model.score_logmel(logmel)
    version, predicted = classifier_predictions(tiny.run, logmel)
    assert version == "coincide classifier checkpoint.pt"
    assert not model.multilabel  # one label each: the best class, scored with its score
    assert [p["labels"] for p in predicted] == [[model.classes[i]] for i in scores.argmax(1)]
    assert [p["score"] for p in predicted] == pytest.approx(scores.max(1).tolist(), abs=1e-6)

    tasks = export_tasks(setup, tmp_path / "ls", "--model", tiny.run)
    made = [t["predictions"][-1] for t in tasks]
    assert {m["model_version"] for m in made} == {version}
    assert [m["result"][0]["value"]["choices"] for m in made] == [p["labels"] for p in predicted]
    assert [m["score"] for m in made] == pytest.approx([p["score"] for p in predicted], abs=1e-6)
    config = ElementTree.parse(tmp_path / "ls" / "label_config.xml").getroot()
    offered = {c.get("value") for c in config.find("Choices[@name='labels']")}
    assert {label for p in predicted for label in p["labels"]} <= offered


# ---------------------------------------------------------------------------------------------
# Import


def choices(control: str, values: list[str]) -> dict:
    return {
        "from_name": control,
        "to_name": "audio",
        "type": "choices",
        "value": {"choices": values},
    }


def annotation(ident, result, by, updated, cancelled=False) -> dict:
    return {
        "id": ident,
        "result": result,
        "was_cancelled": cancelled,
        "ground_truth": False,
        "created_at": updated,
        "updated_at": updated,
        "lead_time": 4.2,
        "task": None,
        "completed_by": by,
    }


def label_studio_export(tasks: list[dict]) -> list[dict]:
    """Our tasks as Label Studio exports them after people annotated them."""
    ann = {"id": 1, "email": "ann@example.com", "first_name": "Ann", "last_name": ""}
    textarea = {
        "from_name": "new_labels",
        "to_name": "audio",
        "type": "textarea",
        "value": {"text": ["dogg\n  bay  \n", "Dog"]},
    }
    annotations = {
        3: [annotation(11, [choices("labels", ["Dog"]), textarea], ann, "2024-05-02T10:00:00Z")],
        0: [annotation(12, [], 7, "2024-05-02T10:01:00Z", cancelled=True)],
        4: [
            annotation(
                13,
                [choices("labels", ["cat"]), choices("answer", ["mixed"])],
                ann,
                "2024-05-02T10:02:00Z",
            )
        ],
        # Two people: the later answer is the current one, the earlier stays in the history.
        1: [
            annotation(15, [choices("labels", ["bird"])], 8, "2024-05-02T10:05:00Z"),
            annotation(14, [choices("labels", ["owl"])], ann, "2024-05-02T10:03:00Z"),
        ],
        5: [annotation(16, [], ann, "2024-05-02T10:06:00Z")],  # submitted empty: nothing
    }
    exported = []
    for ident, task in enumerate(tasks, start=100):
        made = dict(task, id=ident, project=9, annotations=annotations[task["data"]["cluster_id"]])
        for item in made["annotations"]:
            item["task"] = ident
        exported.append(made)
    return exported


def test_import_adds_answers_with_provenance_and_only_once(setup, tmp_path):
    answer(setup, 3, ["dog", "bark"], who="alice")  # answered on the page before
    tasks = export_tasks(setup, tmp_path / "ls")
    export = tmp_path / "project-9.json"
    export.write_text(json.dumps(label_studio_export(tasks)), encoding="utf-8")

    result = cli("labels", "import", setup.run, export)
    assert result.exit_code == 0, result.output
    assert "imported 5 answers" in result.output
    # Cluster 3 had the page's answer, cluster 1 the first of its two Label Studio answers.
    assert "2 to clusters answered before" in result.output
    with SQLiteLabelStore(setup.db) as store:
        session = store.get_session("cluster")
        current = {a.cluster_id: a for a in store.answers(session.id)}
        history = store.history(session.id)
    assert {c: (a.kind, a.labels, a.annotator) for c, a in current.items()} == {
        3: ("label", ("Dog", "dogg", "bay"), "label-studio:ann@example.com"),
        0: ("skip", (), "label-studio:user-7"),
        4: ("mixed", ("cat",), "label-studio:ann@example.com"),
        1: ("label", ("bird",), "label-studio:user-8"),
    }
    # Nothing was lost: the page's answer and the earlier Label Studio one are in the history.
    assert [(a.cluster_id, a.labels) for a in history] == [
        (3, ("dog", "bark")),
        (3, ("Dog", "dogg", "bay")),
        (0, ()),
        (4, ("cat",)),
        (1, ("owl",)),
        (1, ("bird",)),
    ]
    lines = [json.loads(line) for line in log_path(setup.db).read_text().splitlines()]
    assert [line["answer_id"] for line in lines] == [a.id for a in history[1:]]
    assert lines[0]["label_studio"] == {
        "project": 9,
        "task": 100,
        "annotation": 11,
        "created_at": "2024-05-02T10:00:00Z",
        "updated_at": "2024-05-02T10:00:00Z",
        "lead_time_s": 4.2,
    }
    assert lines[0]["export"] == str(export.resolve()) and len(lines[0]["export_sha256"]) == 64
    assert lines[0]["key"] == "label-studio:9:100:11:2024-05-02T10:00:00Z"
    # Imported answers propagate like any other: cluster 3 is windows 8-10, cluster 1 is 3-5.
    table = tmp_path / "csv"
    assert cli("labels", "export", setup.run, "--out", table).exit_code == 0
    windows = pd.read_csv(table / "windows.csv", keep_default_na=False)
    assert list(zip(windows["window_index"], windows["label"], strict=True)) == [
        (3, "bird"),
        (4, "bird"),
        (5, "bird"),
        *[(w, label) for w in (8, 9, 10) for label in ("Dog", "dogg", "bay")],
    ]

    # The same export again adds nothing; an annotation edited since comes in as a newer answer.
    again = cli("labels", "import", setup.run, export)
    assert again.exit_code == 0, again.output
    assert "imported 0 answers" in again.output and "5 were imported before" in again.output
    edited = label_studio_export(tasks)
    edited[0]["annotations"][0]["result"] = [choices("labels", ["Bark"])]
    edited[0]["annotations"][0]["updated_at"] = "2024-05-03T09:00:00Z"
    export.write_text(json.dumps(edited), encoding="utf-8")
    assert "imported 1 answers" in cli("labels", "import", setup.run, export).output
    with SQLiteLabelStore(setup.db) as store:
        session = store.get_session("cluster")
        assert len(store.history(session.id)) == 7
        assert store.answers(session.id)[0].labels == ("Bark",)
        # No labeling page can take an imported answer back: its owner key is not a page's.
        assert store.undo_last(session.id, "label-studio:ann@example.com", owner="tab-a") is None
    assert len(log_path(setup.db).read_text().splitlines()) == 6


def test_import_leaves_out_tasks_it_cannot_place(setup, tmp_path):
    tasks = export_tasks(setup, tmp_path / "ls")
    exported = label_studio_export(tasks)
    exported[1]["data"]["coincide_session"] = "other"
    exported[2]["data"]["window"] = 11  # cluster 4 is shown through window 12
    exported[3]["data"]["cluster_id"] = 2  # never asked
    del exported[4]["data"]["cluster_id"]
    exported.append({"id": 999, "data": {"audio": "x.wav"}, "annotations": []})
    export = tmp_path / "export.json"
    export.write_text(json.dumps(exported), encoding="utf-8")
    summary = import_run(setup.run, export)
    assert summary.imported == 1  # cluster 3 only
    assert summary.left_out == [
        "task 101: it belongs to session 'other', not 'cluster' (pass --session)",
        "task 102: cluster 4 is shown through window 12 in this session, not 11",
        "task 103: session 'cluster' never asked for cluster 2",
        "task 104: its data has no integer 'cluster_id' (not a task coincide exported)",
        "task 999: its data has no integer 'cluster_id' (not a task coincide exported)",
    ]


def test_import_errors_are_one_sentence(setup, tmp_path):
    cases = {
        "missing.json": (None, "does not exist"),
        "broken.json": ("[{", "is not JSON"),
        "object.json": ('{"data": {}}', "is not a list of tasks"),
        "foreign.json": ('[{"data": {"image": "a.jpg"}, "annotations": []}]', "nothing in"),
    }
    for name, (text, said) in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text, encoding="utf-8")
        assert said in user_error(cli("labels", "import", setup.run, path))
    with pytest.raises(UserError, match="no label store"):
        import_run(tmp_path, tmp_path / "broken.json")


def test_read_task_takes_labels_from_every_kind_of_result():
    task = {
        "id": 5,
        "data": {"coincide_session": "s", "cluster_id": 2, "window": 7},
        "annotations": [
            annotation(
                1,
                [
                    {"type": "taxonomy", "value": {"taxonomy": [["Animal", "Dog"]]}},
                    {"type": "labels", "value": {"start": 0, "end": 1, "labels": ["Bark"]}},
                    {"type": "rating", "value": {"rating": 4}},
                    choices("answer", ["unsure"]),
                ],
                {"id": 3},
                "2024-01-01T00:00:00Z",
            )
        ],
    }  # fmt: skip
    [read] = fmt.read_task(task)
    assert (read.kind, read.labels, read.annotator) == (
        "unsure",
        ("Dog", "Bark"),
        "label-studio:user-3",
    )
    assert fmt.annotator_name(None) == "label-studio:unknown"
    for bad, said in (
        ([], "not an object with 'data'"),
        ({"data": {"cluster_id": 1, "window": True}}, "no integer 'window'"),
        ({"data": {"cluster_id": 1, "window": 2}, "annotations": {}}, "not a list"),
        (
            {
                "data": {"cluster_id": 1, "window": 2},
                "annotations": [{"result": [{"type": "choices", "value": {"choices": [1]}}]}],
            },
            "list of strings",
        ),
    ):  # fmt: skip
        with pytest.raises(fmt.FormatError, match=said):
            fmt.read_task(bad)
