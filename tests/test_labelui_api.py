"""The labeling page's API: every endpoint, the bad requests, safety, resuming, and the export.

The fixture is a real labeling setup built without training: media written with PyAV
(`mediagen`: second k of every file sounds `tone_hz(k)` and shows `colour(k)`), a feature store
written with the store writer (frames = the media's colours, log-mel synthetic), a hand-made
clustering written as `coincide cluster` writes it, and a session whose requests are added
through the label store.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
import wave
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

# Starlette's TestClient runs on httpx2 (a dev dependency); both come with `.[dev]`, so a
# missing one is an install error, not a reason to skip.
from starlette.testclient import TestClient  # noqa: E402
from typer.testing import CliRunner

from coincide.cli.commands import app as cli_app
from coincide.errors import UserError
from coincide.labeling.clusters import store_clusters_dir, write_clustering
from coincide.labelui import server  # noqa: E402
from coincide.labelui.app import create_app  # noqa: E402
from coincide.labelui.campaign import NotFound  # noqa: E402
from coincide.labelui.clips import clip_span  # noqa: E402
from coincide.labelui.vocab import Suggestion, Term, Vocabulary, load_vocabulary, suggest  # noqa: E402
from coincide.store.labels_sqlite import SQLiteLabelStore
from coincide.store.media_id import media_id_of
from coincide.store.writer import MediaRecord, StoreWriter

sys.path.insert(0, str(Path(__file__).parent))
import mediagen  # noqa: E402

FRONTEND = {"n_mels": 64, "window_frames": 96, "frame_size": 128}
BASE = "http://127.0.0.1:8750"
XSS = "<img src=x onerror=alert(1)>"
MARK = (255, 214, 10)

# window -> cluster: clip one.mp4 (windows 0-5), tone.wav (6-10, no video), two.mkv (11-14)
ASSIGNMENT = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 5, 5], dtype=np.int64)
# (cluster, member window) in asking order; cluster 2 is never asked.
REQUESTS = [(3, 9), (0, 1), (4, 12), (1, 4), (5, 13)]

# A tiny AudioSet ontology.json: names, descriptions, and a blacklisted class left out.
ONTOLOGY = [
    {
        "id": "/m/0bt9lr",
        "name": "Dog",
        "description": "All sounds made by a dog.",
        "child_ids": ["/m/05tny_"],
        "restrictions": [],
    },
    {
        "id": "/m/05tny_",
        "name": "Bark",
        "description": "Principal communication sound of a dog.",
        "child_ids": [],
        "restrictions": [],
    },
    {
        "id": "/m/05zppz",
        "name": "Male speech, man speaking",
        "description": "Speech by an adult male human.",
        "child_ids": [],
        "restrictions": [],
    },
    {
        "id": "/m/0dgw9r",
        "name": "Human sounds",
        "description": "Sounds produced by the human body.",
        "child_ids": ["/m/05zppz"],
        "restrictions": ["abstract"],
    },
    {
        "id": "/t/dd00099",
        "name": "Hot dog vendor",
        "description": "A blacklisted class.",
        "child_ids": [],
        "restrictions": ["blacklist"],
    },
]


@dataclass
class LabelingRun:
    """Paths of a built labeling setup."""

    root: Path
    media: list[Path]
    store: Path
    run: Path
    db: Path


def write_ontology(path: Path) -> Path:
    path.write_text(json.dumps(ONTOLOGY), encoding="utf-8")
    return path


def write_media(folder: Path) -> list[Path]:
    """Three media files: a 6 s mp4, a 5 s wav (no picture), a 4 s mkv."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        mediagen.write_video(folder / "clip one.mp4", "mp4", seconds=6, width=96, height=64),
        mediagen.write_audio(folder / "tone.wav", "wav", seconds=5),
        mediagen.write_video(folder / "two.mkv", "mkv", seconds=4, width=64, height=48),
    ]


def build_labeling_run(root: Path, sources: list[Path]) -> LabelingRun:
    """Copies of `sources` (from `write_media`), their feature store, the clustering and a
    session of five requests (see the module docstring)."""
    media_dir = root / "media"
    media_dir.mkdir(parents=True)
    media = [Path(shutil.copy2(source, media_dir / source.name)) for source in sources]
    seconds, has_video = [6, 5, 4], [True, False, True]
    # The same log-mel pattern in every window: the picture tests compare pixels across windows.
    pattern = np.linspace(-4.0, 2.0, 64 * 96, dtype=np.float32).reshape(64, 96)
    store = root / "store"
    with StoreWriter(store, FRONTEND) as writer:
        for path, n, video in zip(media, seconds, has_video, strict=True):
            stat = os.stat(path)
            frames = None
            if video:
                colours = [mediagen.solid_frame(mediagen.colour(k), 128, 128) for k in range(n)]
                frames = np.stack(colours)
            writer.add(
                MediaRecord(
                    media_id=media_id_of(path),
                    media_path=str(path.resolve()),
                    size=stat.st_size,
                    mtime_ns=stat.st_mtime_ns,
                    duration_s=float(n),
                    logmel=np.repeat(pattern[None], n, axis=0),
                    frames=frames,
                    has_frame=np.full(n, video),
                    time_s=np.arange(n, dtype=np.float64),
                )
            )
    run = root / "run"
    run.mkdir()
    num_clusters = int(ASSIGNMENT.max()) + 1
    write_clustering(
        store_clusters_dir(run, store), ASSIGNMENT, num_clusters, {"clustering": "head"}
    )
    db = run / "labels.sqlite"
    with SQLiteLabelStore(db) as labels:
        session = labels.create_session(
            "cluster", str(run), str(store.resolve()), "cluster", 0, {"clustering": "head"}
        )
        labels.add_requests(session, REQUESTS)
    return LabelingRun(root, media, store, run, db)


@pytest.fixture(scope="module")
def media_sources(tmp_path_factory) -> list[Path]:
    return write_media(tmp_path_factory.mktemp("media_sources"))


@pytest.fixture(scope="module")
def built(media_sources, tmp_path_factory) -> LabelingRun:
    return build_labeling_run(tmp_path_factory.mktemp("built"), media_sources)


@pytest.fixture
def setup(built, tmp_path) -> LabelingRun:
    """The built setup with a private copy of the run (its label store and clustering); media
    and feature store are shared and must not be changed (use `fresh` for that)."""
    run = Path(shutil.copytree(built.run, tmp_path / "run"))
    return replace(built, root=tmp_path, run=run, db=run / "labels.sqlite")


@pytest.fixture
def fresh(media_sources, tmp_path) -> LabelingRun:
    """A setup of its own, media and store included."""
    return build_labeling_run(tmp_path / "labeling", media_sources)


def open_app(setup: LabelingRun, vocabulary: Vocabulary | None = None, **kwargs):
    """(client, campaign, label store) for the setup's session; close the store when done."""
    opened = server.open_campaign(setup.run, setup.store, budget=len(REQUESTS))
    kwargs.setdefault("allowed_hosts", server.LOOPBACK_NAMES)
    app = create_app(opened.campaign, vocabulary or Vocabulary(), **kwargs)
    return TestClient(app, base_url=BASE), opened.campaign, opened.labels


@pytest.fixture
def client(setup):
    client, _campaign, labels = open_app(setup)
    yield client
    labels.close()


def claim(client: TestClient, claimant: str) -> dict | None:
    response = client.post("/api/next", json={"claimant": claimant})
    assert response.status_code == 200, response.text
    return response.json()["request"]


def give(
    client: TestClient,
    claimant: str,
    request: dict,
    kind="label",
    labels=("dog",),
    who="ann",
    owner=None,
):
    extra = {} if owner is None else {"owner": owner}
    return client.post(
        "/api/answer",
        json={
            **extra,
            "claimant": claimant,
            "cluster_id": request["cluster_id"],
            "window": request["window"],
            "kind": kind,
            "labels": list(labels),
            "annotator": who,
        },
    )


def assert_json_error(response, status: int, contains: str = "") -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["error"]
    assert contains.lower() in message.lower()
    assert "Traceback" not in response.text


def wav_samples(content: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(content)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
        rate = wav.getframerate()
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return data.astype(np.float64) / 32767, rate


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


# ---------------------------------------------------------------------------------------------
# Page, state, vocabulary


def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js" defer>' in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    script = client.get("/static/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "textContent" in script.text
    # Label text reaches the page only as text: no HTML-parsing sink in the script.
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script.text
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    assert_json_error(client.get("/static/server.py"), 404, "no static file")


def test_state(setup):
    client, _campaign, labels = open_app(setup, annotator="alice")
    state = client.get("/api/state").json()
    labels.close()
    assert state["session"] == "cluster"
    assert state["progress"] == {"answered": 0, "budget": 5, "windows_labeled": 0}
    assert state["annotator"] == "alice"
    assert state["context_s"] == 2.0
    assert state["answer_kinds"] == ["label", "skip", "unsure", "mixed"]


def test_vocabulary_files(tmp_path):
    text = tmp_path / "labels.txt"
    text.write_text("# my labels\nDog\n\nBark\nDog\n  door knock  \n", encoding="utf-8")
    assert [t.name for t in load_vocabulary(text).terms] == ["Dog", "Bark", "door knock"]
    ontology = load_vocabulary(write_ontology(tmp_path / "ontology.json"))
    assert [t.name for t in ontology.terms] == [
        "Dog",
        "Bark",
        "Male speech, man speaking",
        "Human sounds",
    ]
    assert ontology.terms[1].description == "Principal communication sound of a dog."
    # Name prefix, then a word of the name, then inside the name, then the description.
    assert [t.name for t in ontology.search("do")] == ["Dog", "Bark"]
    assert [t.name for t in ontology.search("man")] == ["Male speech, man speaking", "Human sounds"]
    assert [t.name for t in ontology.search("SPEAK")] == ["Male speech, man speaking"]
    assert ontology.search("", limit=2) == [
        Term("Dog", "All sounds made by a dog."),
        ontology.terms[1],
    ]
    assert len(load_vocabulary(None)) == 0
    with pytest.raises(UserError, match="does not exist"):
        load_vocabulary(tmp_path / "absent.txt")
    (tmp_path / "bad.json").write_text("[{", encoding="utf-8")
    with pytest.raises(UserError, match="does not parse"):
        load_vocabulary(tmp_path / "bad.json")
    (tmp_path / "nameless.json").write_text('[{"id": "x"}]', encoding="utf-8")
    with pytest.raises(UserError, match="without a 'name'"):
        load_vocabulary(tmp_path / "nameless.json")


def test_suggestions_put_used_labels_first_and_never_merge_a_new_one():
    vocabulary = Vocabulary([Term("Dog", "All sounds made by a dog."), Term("Bark"), Term("Cat")])
    used = {"dog": 1, "door knock": 3, "Bark": 2}
    names = lambda query, limit=9: [s.name for s in suggest(vocabulary, used, query, limit)]  # noqa: E731
    # Empty field: the labels given so far, most used first, then the vocabulary in file order.
    assert names("") == ["door knock", "Bark", "dog", "Dog", "Cat"]
    assert names("", 2) == ["door knock", "Bark"]
    # 'dog' (given once) and 'Dog' (the vocabulary's) stay two labels: nothing is case-folded
    # into another; a name prefix beats a description match ("dog" in Bark's description).
    assert names("do") == ["door knock", "dog", "Dog"]
    assert names("DOG") == ["dog", "Dog"]
    assert suggest(vocabulary, used, "bar") == [Suggestion("Bark", "", 2)]
    assert suggest(vocabulary, {}, "ca") == [Suggestion("Cat", "", 0)]
    assert names("knock") == ["door knock"]
    assert names("zebra") == []


def test_vocab_endpoint(setup, tmp_path):
    vocabulary = load_vocabulary(write_ontology(tmp_path / "ontology.json"))
    client, _campaign, labels = open_app(setup, vocabulary)
    terms = client.get("/api/vocab", params={"q": "dog", "limit": 5}).json()["terms"]
    assert terms == [
        {"name": "Dog", "description": "All sounds made by a dog.", "uses": 0},
        {"name": "Bark", "description": "Principal communication sound of a dog.", "uses": 0},
    ]
    # Labels given in the session come first, with how many answers carry them (ties: first
    # given first).
    assert (
        give(client, "tab-a", claim(client, "tab-a"), labels=["dogfish", "Dog"]).status_code == 200
    )
    terms = client.get("/api/vocab", params={"q": "dog", "limit": 5}).json()["terms"]
    assert [(t["name"], t["uses"]) for t in terms] == [("dogfish", 1), ("Dog", 1), ("Bark", 0)]
    assert len(client.get("/api/vocab", params={"limit": 3}).json()["terms"]) == 3
    assert_json_error(client.get("/api/vocab", params={"limit": "0"}), 400, "limit")
    assert_json_error(client.get("/api/vocab", params={"limit": "ten"}), 400, "limit")
    assert_json_error(client.get("/api/vocab", params={"q": "x" * 300}), 400, "'q'")
    labels.close()


# ---------------------------------------------------------------------------------------------
# Claims, members, media


def test_next_hands_each_cluster_to_one_tab(client):
    first = claim(client, "tab-a")
    assert (first["cluster_id"], first["window"], first["cluster_size"]) == (3, 9, 3)
    assert first["member"] == {
        "window": 9,
        "cluster_id": 3,
        "media_name": "tone.wav",
        "time_s": 3.0,
        "has_frame": False,
        "clip": {"start_s": 1.0, "end_s": 5.0, "window_start_s": 3.0, "window_end_s": 3.96},
    }
    # Another tab gets the next cluster; the first tab asking again keeps its own.
    assert claim(client, "tab-b")["cluster_id"] == 0
    assert claim(client, "tab-a")["cluster_id"] == 3
    assert [claim(client, f"tab-{k}")["cluster_id"] for k in "cde"] == [4, 1, 5]
    assert claim(client, "tab-f") is None


def test_clip_span_is_cut_to_the_file():
    span = clip_span(0.0, 6.0, 2.0)
    assert (span.start_s, span.end_s, span.window_start_s, span.window_end_s) == (
        0.0,
        2.96,
        0.0,
        0.96,
    )
    span = clip_span(5.0, 6.0, 2.0)
    assert (span.start_s, span.end_s) == (3.0, 6.0)


@pytest.mark.parametrize(
    ("window", "start_s", "end_s", "time_s"),
    [
        (9, 1.0, 5.0, 3),  # tone.wav (PCM)
        (4, 2.0, 6.0, 4),  # clip one.mp4 (AAC), decoded after a seek
        (13, 0.0, 4.0, 2),  # two.mkv (Opus)
    ],
)
def test_audio_is_the_clip_around_the_window(client, window, start_s, end_s, time_s):
    response = client.get(f"/api/windows/{window}/audio.wav")
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/wav"
    samples, rate = wav_samples(response.content)
    assert rate == 16000
    assert abs(len(samples) / rate - (end_s - start_s)) < 0.05
    # The window sounds its second's tone; the second before it (context) sounds the earlier one.
    at = round((time_s - start_s) * rate)
    assert dominant_hz(samples[at + 1600 : at + 14000], rate) == pytest.approx(
        mediagen.tone_hz(time_s), abs=15
    )
    assert dominant_hz(samples[at - 14000 : at - 1600], rate) == pytest.approx(
        mediagen.tone_hz(time_s - 1), abs=15
    )


def test_spectrogram_marks_the_window(client):
    response = client.get("/api/windows/9/spectrogram.png")
    assert response.headers["content-type"] == "image/png"
    image = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")).astype(int)
    # Clip [1, 5] s at 100 columns per second, 2 pixels per column; 64 mel bins x 3 pixels.
    assert image.shape == (192, 800, 3)
    window_x, context_x = 400 + 40, 400 - 200 + 40  # same column of the same log-mel pattern
    assert tuple(image[50, 400]) == MARK and tuple(image[50, 591]) == MARK
    assert tuple(image[0, window_x]) == MARK
    for row in (20, 90, 150):
        assert np.all(image[row, context_x] == (image[row, window_x] * 0.45).astype(int))
        assert image[row, window_x].sum() > image[row, context_x].sum()


def test_frames(client):
    frame = Image.open(io.BytesIO(client.get("/api/windows/4/frame.png").content))
    assert frame.size == (128, 128)
    assert frame.convert("RGB").getpixel((64, 64)) == mediagen.colour(4)
    assert_json_error(client.get("/api/windows/9/frame.png"), 404, "no video frame")
    strip = Image.open(io.BytesIO(client.get("/api/windows/4/filmstrip.png").content)).convert(
        "RGB"
    )
    # Windows at 2, 3, 4, 5 s of clip one.mp4: four cells of 96 pixels, 4 pixels apart.
    assert strip.size == (4 * 100 + 4, 104)
    assert [strip.getpixel((4 + k * 100 + 48, 52)) for k in range(4)] == [
        mediagen.colour(k) for k in (2, 3, 4, 5)
    ]
    assert strip.getpixel((4 + 2 * 100 - 2, 52)) == MARK
    audio_only = Image.open(io.BytesIO(client.get("/api/windows/9/filmstrip.png").content))
    assert audio_only.convert("RGB").getpixel((4 + 48, 52)) == (90, 90, 96)


def test_random_member_stays_in_the_cluster(client):
    seen = set()
    for _ in range(12):
        response = client.get("/api/clusters/3/random-member", params={"exclude": 9})
        member = response.json()["member"]
        assert member["cluster_id"] == 3
        seen.add(member["window"])
    assert seen == {8, 10}
    assert_json_error(client.get("/api/clusters/2/random-member"), 404, "not in this labeling")
    assert_json_error(client.get("/api/clusters/99/random-member"), 404, "not in this labeling")


def test_media_of_windows_outside_the_session_are_not_served(client):
    # Window 6 is in cluster 2, which the session does not ask about; 15 is past the store.
    for path in ("audio.wav", "spectrogram.png", "frame.png", "filmstrip.png"):
        assert_json_error(client.get(f"/api/windows/6/{path}"), 404, "not in a cluster")
        assert_json_error(client.get(f"/api/windows/15/{path}"), 404, "not in the store")
        assert_json_error(client.get(f"/api/windows/{10**30}/{path}"), 404, "not in the store")


# ---------------------------------------------------------------------------------------------
# Answers, undo, progress


def test_answers_go_through_the_label_store(setup):
    client, campaign, labels = open_app(setup)
    first = claim(client, "tab-a")
    response = give(client, "tab-a", first, labels=["dog", "bark"], who="alice")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["answer"]["labels"] == ["dog", "bark"]
    assert body["progress"] == {"answered": 1, "budget": 5, "windows_labeled": 3}
    stored = labels.answers(campaign.session.id)
    assert [(a.cluster_id, a.window_index, a.labels, a.kind, a.annotator) for a in stored] == [
        (3, 9, ("dog", "bark"), "label", "alice")
    ]
    # Skip, unsure and mixed answers are stored but label no windows.
    second = claim(client, "tab-a")
    assert give(client, "tab-a", second, kind="skip", labels=[]).status_code == 200
    third = claim(client, "tab-a")
    assert give(client, "tab-a", third, kind="mixed", labels=["cat"]).status_code == 200
    progress = client.get("/api/state").json()["progress"]
    assert progress == {"answered": 3, "budget": 5, "windows_labeled": 3}
    latest = client.get("/api/answers", params={"limit": 2}).json()["answers"]
    assert [(a["cluster_id"], a["kind"], a["labels"]) for a in latest] == [
        (4, "mixed", ["cat"]),
        (0, "skip", []),
    ]
    labels.close()


def test_bad_answers(setup):
    client, _campaign, labels = open_app(setup)
    held = claim(client, "tab-a")
    other = claim(client, "tab-b")
    assert_json_error(give(client, "tab-a", held, kind="maybe"), 400, "kind")
    assert_json_error(give(client, "tab-a", held, labels=[]), 400, "at least one label")
    assert_json_error(give(client, "tab-a", held, kind="skip"), 400, "carries no labels")
    assert_json_error(give(client, "tab-a", held, labels=[" "]), 400, "empty")
    assert_json_error(give(client, "tab-a", held, labels=["x" * 201]), 400, "longer than")
    assert_json_error(give(client, "tab-a", held, labels=["x"] * 33), 400, "at most")
    assert_json_error(give(client, "tab-a", held, who=""), 400, "annotator")
    assert_json_error(give(client, "tab-a", held, who="Oracle"), 400, "reserved")
    assert_json_error(give(client, "tab-a", {**held, "window": 8}), 409, "shown through window 9")
    assert_json_error(give(client, "tab-a", {**held, "cluster_id": 2}), 404, "not in this labeling")
    # The cluster another tab holds cannot be answered here.
    assert_json_error(give(client, "tab-a", other), 409, "another tab")
    fields = {"claimant": "tab-a", "cluster_id": 3, "window": 9, "kind": "label", "annotator": "a"}
    # pydantic's strict models: a JSON integer only, a list of strings only, one sentence back.
    for bad, said in (
        ({**fields, "labels": "dog"}, "field 'labels' must be a list of strings."),
        ({**fields, "labels": [1]}, "field 'labels' must be a list of strings."),
        (
            {**fields, "cluster_id": "3", "labels": ["dog"]},
            "field 'cluster_id' must be an integer.",
        ),
        (
            {**fields, "cluster_id": 3.0, "labels": ["dog"]},
            "field 'cluster_id' must be an integer.",
        ),
        ({**fields, "window": True, "labels": ["dog"]}, "field 'window' must be an integer."),
        ({**fields, "claimant": "../etc"}, "field 'claimant' must be 1-64 letters"),
        ({"claimant": "tab-a", "kind": "label"}, "field 'cluster_id' is missing"),
        ({**fields, "labels": [[[["dog"]]]]}, "field 'labels' must be a list of strings."),
    ):
        assert_json_error(client.post("/api/answer", json=bad), 400, said)
    # Unknown fields are ignored, as before.
    extra = {**fields, "labels": ["dog"], "cluster_id": 0, "window": 1, "colour": "red"}
    assert_json_error(client.post("/api/answer", json=extra), 409, "another tab")
    assert give(client, "tab-a", held).status_code == 200
    assert_json_error(give(client, "tab-a", held), 409, "already answered")
    labels.close()


def test_undo_reopens_the_cluster_for_this_tab(setup):
    client, _campaign, labels = open_app(setup)
    first = claim(client, "tab-a")
    assert give(client, "tab-a", first, labels=["dog"], who="alice").status_code == 200
    second = claim(client, "tab-a")
    assert give(client, "tab-a", second, labels=["cat"], who="bob").status_code == 200
    third = claim(client, "tab-a")
    assert third["cluster_id"] == 4
    # Undo takes back alice's latest answer (not bob's), and the tab is shown that cluster again.
    response = client.post("/api/undo", json={"claimant": "tab-a", "annotator": "alice"})
    body = response.json()
    assert (body["undone"]["cluster_id"], body["undone"]["labels"]) == (3, ["dog"])
    assert body["progress"] == {"answered": 1, "budget": 5, "windows_labeled": 3}
    assert claim(client, "tab-a")["cluster_id"] == 3
    assert claim(client, "tab-b")["cluster_id"] == 4
    nothing = client.post("/api/undo", json={"claimant": "tab-a", "annotator": "carol"})
    assert nothing.json()["undone"] is None
    assert_json_error(client.post("/api/undo", json={"claimant": "tab-a"}), 400, "annotator")
    labels.close()


def test_undo_takes_back_only_answers_this_page_gave(setup):
    # Anyone can type "alice" in the name field: the browser's owner key decides whose answers
    # a page may take back.
    client, _campaign, labels = open_app(setup)
    first = claim(client, "tab-a")
    assert give(client, "tab-a", first, who="alice", owner="owner-alice").status_code == 200
    undo = {"claimant": "tab-m", "annotator": "alice", "owner": "owner-mallory"}
    assert client.post("/api/undo", json=undo).json()["undone"] is None
    # Without an owner, a page owns its answers by its claimant: another tab cannot undo them.
    assert (
        client.post("/api/undo", json={"claimant": "tab-m", "annotator": "alice"}).json()["undone"]
        is None
    )
    mine = {"claimant": "tab-b", "annotator": "alice", "owner": "owner-alice"}
    body = client.post("/api/undo", json=mine).json()  # another tab of alice's browser: yes
    assert body["undone"]["cluster_id"] == first["cluster_id"]
    bad = {"claimant": "tab-a", "annotator": "alice", "owner": "no spaces"}
    assert_json_error(client.post("/api/undo", json=bad), 400, "owner")
    labels.close()


# A labeling server in its own process, so that the test can kill it (SIGKILL: no clean-up at
# all). It is built from the app's parts, with the assignment read directly, to start quickly.
KILLABLE_SERVER = """
import sys
import numpy as np
import uvicorn
from coincide.labelui.app import create_app
from coincide.labelui.campaign import Campaign, find_session
from coincide.labelui.server import _listening_socket
from coincide.labelui.vocab import Vocabulary
from coincide.store.features import open_store
from coincide.store.labels_sqlite import SQLiteLabelStore

db, store_path, assignment_path = sys.argv[1:4]
labels = SQLiteLabelStore(db)
session = find_session(labels, None)
campaign = Campaign(labels, session, open_store(store_path), np.load(assignment_path))
sock = _listening_socket("127.0.0.1", 0)
print(sock.getsockname()[1], flush=True)
config = uvicorn.Config(create_app(campaign, Vocabulary()), log_level="warning", lifespan="off")
uvicorn.Server(config).run(sockets=[sock])
"""


def test_the_listening_socket_lets_asyncio_turn_off_nagle():
    # asyncio sets TCP_NODELAY on accepted connections only when the socket's proto is TCP;
    # with proto 0 every response waited ~40 ms for a delayed ACK (benchmarks/label_server.py).
    sock = server._listening_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_a_deeply_nested_body_is_a_400_not_a_500(client):
    deep = "[" * 30_000 + "]" * 30_000
    response = client.post(
        "/api/answer", content=deep, headers={"Content-Type": "application/json"}
    )
    assert_json_error(response, 400, "nested too deeply")


def http_post(port: int, path: str, payload: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_a_killed_server_loses_nothing_and_a_new_one_resumes(setup):
    assignment = store_clusters_dir(setup.run, setup.store) / "assignment.npy"
    process = subprocess.Popen(
        [sys.executable, "-c", KILLABLE_SERVER, str(setup.db), str(setup.store), str(assignment)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(process.stdout.readline())
        for labels in (["dog"], ["cat", "purr"]):
            request = http_post(port, "/api/next", {"claimant": "tab-a"})["request"]
            answer = {"cluster_id": request["cluster_id"], "window": request["window"]}
            answer.update(claimant="tab-a", kind="label", labels=labels, annotator="ann")
            http_post(port, "/api/answer", answer)
        held = http_post(port, "/api/next", {"claimant": "tab-a"})["request"]
        assert held["cluster_id"] == 4
    finally:
        process.kill()
        process.wait()

    client, campaign, labels = open_app(setup)
    assert client.get("/api/state").json()["progress"] == {
        "answered": 2,
        "budget": 5,
        "windows_labeled": 6,
    }
    answers = client.get("/api/answers").json()["answers"]
    assert [(a["cluster_id"], a["labels"]) for a in answers] == [(0, ["cat", "purr"]), (3, ["dog"])]
    # The killed server's tab held cluster 4; the new server frees it, so a new tab resumes there.
    assert campaign.release_stale_claims() == 1
    assert claim(client, "new-tab")["cluster_id"] == 4
    labels.close()


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGHUP"])
def test_a_page_stopped_by_a_signal_writes_the_labels_and_finetune_sees_stale_ones(setup, stop):
    """A closed terminal (SIGHUP) or a service stop (SIGTERM) ends the page as Ctrl+C does: the
    propagated labels are written. Answers given after that make them stale for finetune."""
    from coincide.labeling.sessions import check_propagated_current, labels_dir

    command = [sys.executable, "-m", "coincide.cli", "label", str(setup.run), "--store"]
    command += [str(setup.store), "--budget", "3", "--session", "people", "--serve"]
    command += ["--port", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        for line in process.stdout:
            if line.startswith("open http://"):
                port = int(line.split(":")[2].split("/")[0])
                break
        request = http_post(port, "/api/next", {"claimant": "tab-a"})["request"]
        answer = {"cluster_id": request["cluster_id"], "window": request["window"]}
        answer.update(claimant="tab-a", kind="label", labels=["dog"], annotator="ann")
        http_post(port, "/api/answer", answer)
        process.send_signal(getattr(signal, stop))
        _out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert "stopped; 1 of 3 clusters answered" in err
    folder = labels_dir(setup.run, "people")
    propagated = pd.read_parquet(folder / "propagated.parquet")
    members = np.flatnonzero(np.equal(ASSIGNMENT, request["cluster_id"]))
    assert sorted(propagated["window_index"]) == list(members)
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    check_propagated_current(setup.run, "people", summary)  # current: no error

    # An answer the propagated file does not know about (a page killed before writing it).
    with SQLiteLabelStore(setup.db) as labels:
        session = labels.get_session("people")
        pending = [r for r in labels.requests(session.id) if r.state != "answered"][0]
        labels.answer(session.id, pending.cluster_id, pending.window_index, ["cat"], "label", "x")
    with pytest.raises(UserError, match="changed after its labels were propagated"):
        check_propagated_current(setup.run, "people", summary)


# ---------------------------------------------------------------------------------------------
# Bad requests and safety


def asgi_get(app, raw_path: bytes, host: bytes = b"127.0.0.1:8750") -> tuple[int, bytes]:
    """A GET with a path exactly as given (test clients normalise `..` away)."""
    messages: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        messages.append(message)

    from urllib.parse import unquote

    path = unquote(raw_path.decode("latin-1"))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": raw_path,
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", host)],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8750),
    }
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return status, body


def test_no_path_reaches_a_file(fresh):
    client, _campaign, labels = open_app(fresh)
    app = client.app
    # A symbolic link next to the media and in the store leads nowhere either.
    (fresh.media[0].parent / "link.wav").symlink_to("/etc/passwd")
    (fresh.store / "passwd").symlink_to("/etc/passwd")
    attempts = [
        b"/static/../../../../etc/passwd",
        b"/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        b"/static/%2e%2e%2f%2e%2e%2fapp.py",
        b"/static/..%5C..%5Capp.py",
        b"/static/%252e%252e%252fapp.py",
        b"/api/windows/..%2F..%2Fetc%2Fpasswd/audio.wav",
        b"/api/windows/9%2F..%2F..%2Fetc%2Fpasswd/audio.wav",
        b"/api/windows/-1/audio.wav",
        b"/api/windows/0x9/audio.wav",
        b"/media/link.wav",
        b"/store/passwd",
        b"/static/link.wav",
        b"/" + str(fresh.media[1]).encode(),
    ]
    for raw in attempts:
        status, body = asgi_get(app, raw)
        assert status == 404, raw
        assert json.loads(body)["error"], raw
        assert b"root:" not in body and b"RIFF" not in body
    labels.close()


def test_media_checked_to_be_the_ingested_file(fresh):
    client, _campaign, labels = open_app(fresh)
    wav = fresh.media[1]  # tone.wav, windows 6-10
    assert client.get("/api/windows/9/audio.wav").status_code == 200
    # Swapped for a link to another file: refused, even with the recorded size and time.
    moved = wav.with_name("moved.wav")
    wav.rename(moved)
    wav.symlink_to(moved)
    assert_json_error(client.get("/api/windows/9/audio.wav"), 409, "link")
    wav.unlink()
    assert_json_error(client.get("/api/windows/9/audio.wav"), 404, "gone")
    # Edited after ingest: refused.
    shutil.copy2(moved, wav)
    stat = wav.stat()
    os.utime(wav, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert_json_error(client.get("/api/windows/9/audio.wav"), 409, "changed since")
    # Same size and time but not media any more: a 422 saying the file does not decode.
    size = stat.st_size
    wav.write_bytes(b"\0" * size)
    os.utime(wav, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert_json_error(client.get("/api/windows/9/audio.wav"), 422, "cannot be decoded")
    labels.close()


def test_bad_requests_get_json_messages(client):
    assert_json_error(client.get("/nothing/here"), 404, "no such address")
    assert_json_error(client.get("/api/windows/abc/audio.wav"), 404, "no such address")
    assert_json_error(client.get("/api/next"), 405, "not allowed")
    assert_json_error(client.delete("/api/answer"), 405, "not allowed")
    assert_json_error(
        client.post(
            "/api/next", content=b'{"claimant": "a"}', headers={"content-type": "text/plain"}
        ),
        415,
        "json",
    )
    assert_json_error(
        client.post("/api/next", content=b"{", headers={"content-type": "application/json"}),
        400,
        "not valid json",
    )
    assert_json_error(client.post("/api/next", json=[1, 2]), 400, "json object")
    assert_json_error(client.post("/api/next", json={}), 400, "claimant")
    assert_json_error(client.post("/api/next", json={"claimant": "x" * 65}), 400, "claimant")
    huge = {"claimant": "a", "padding": "x" * 70_000}
    assert_json_error(client.post("/api/next", json=huge), 413, "over")
    assert_json_error(client.get("/api/answers", params={"limit": "-1"}), 400, "limit")
    assert_json_error(
        client.get("/api/clusters/3/random-member", params={"exclude": "x"}), 400, "exclude"
    )


def test_a_bug_is_a_500_without_details(setup):
    client, _campaign, labels = open_app(setup)
    labels.close()  # every later store call fails: a stand-in for an unexpected error
    quiet = TestClient(client.app, base_url=BASE, raise_server_exceptions=False)
    assert_json_error(quiet.get("/api/state"), 500, "internal error")
    assert "sqlite" not in quiet.get("/api/state").text.lower()


def test_token_required_on_every_request(setup):
    client, _campaign, labels = open_app(setup, token="s3cret-token", allowed_hosts=None)
    for path in ("/", "/static/app.js", "/api/state", "/api/windows/9/audio.wav"):
        assert_json_error(client.get(path), 401, "token")
        assert_json_error(client.get(path, params={"token": "wrong"}), 401, "token")
        assert client.get(path, params={"token": "s3cret-token"}).status_code == 200
        assert client.get(path, headers={"X-Coincide-Token": "s3cret-token"}).status_code == 200
    assert_json_error(client.post("/api/next", json={"claimant": "a"}), 401, "token")
    # The page asks for its script and style with the token.
    page = client.get("/", params={"token": "s3cret-token"}).text
    assert '<script src="/static/app.js?token=s3cret-token" defer>' in page
    assert 'href="/static/style.css?token=s3cret-token"' in page
    labels.close()


def test_loopback_server_refuses_other_host_names(client):
    # Starlette's TrustedHostMiddleware answers before any route: no session data, no media.
    for host in ("evil.example", "evil.example:8750", "127.0.0.1.evil.example", "[::2]:8750"):
        for path in ("/api/state", "/", "/api/windows/9/audio.wav"):
            refused = client.get(path, headers={"host": host})
            assert (refused.status_code, refused.text) == (400, "Invalid host header"), host
            assert refused.headers["x-frame-options"] == "DENY"
    for host in ("127.0.0.1:8750", "localhost:8750", "[::1]:8750", "LOCALHOST", "[::1]"):
        assert client.get("/api/state", headers={"host": host}).status_code == 200, host


def test_label_text_is_returned_as_text(setup):
    client, _campaign, labels = open_app(setup)
    request = claim(client, "tab-a")
    response = give(client, "tab-a", request, labels=[XSS, "a & b"])
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert client.get("/api/answers").json()["answers"][0]["labels"] == [XSS, "a & b"]
    labels.close()


# ---------------------------------------------------------------------------------------------
# Server setup


def test_open_campaign_errors(setup, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        server.open_campaign(tmp_path / "absent", setup.store)
    with pytest.raises(UserError, match="no label store"):
        server.open_campaign(setup.run, setup.store, db_path=tmp_path / "none.sqlite")
    with pytest.raises(UserError, match="fewer than the budget 6"):
        server.open_campaign(setup.run, setup.store, budget=6)
    with pytest.raises(UserError, match="'other' does not exist"):
        server.open_campaign(setup.run, setup.store, session="other")
    with SQLiteLabelStore(setup.db) as labels:
        labels.create_session("second", str(setup.run), str(setup.store), "cluster", 1, {})
    with pytest.raises(UserError, match="several sessions"):
        server.open_campaign(setup.run, setup.store)
    with SQLiteLabelStore(setup.db) as labels:
        labels.create_session(
            "stale", str(setup.run), str(setup.store), "cluster", 1, {"assignment": "0" * 16}
        )
    with SQLiteLabelStore(setup.db) as labels:
        labels.add_requests(labels.get_session("stale").id, [(0, 0)])
    with pytest.raises(UserError, match="changed since session 'stale'"):
        server.open_campaign(setup.run, setup.store, session="stale")


def test_budget_serves_the_first_requests(setup):
    opened = server.open_campaign(setup.run, setup.store, budget=2)
    campaign = opened.campaign
    assert campaign.progress().budget == 2
    assert [campaign.claim(f"tab-{k}").cluster_id for k in range(2)] == [3, 0]
    assert campaign.claim("tab-2") is None
    with pytest.raises(NotFound):
        campaign.member(12)  # cluster 4 is past the budget
    opened.labels.close()
    # The request past the budget was not left leased: the full campaign hands it out at once.
    full = server.open_campaign(setup.run, setup.store)
    assert full.campaign.claim("tab-3").cluster_id == 4
    full.labels.close()


def test_addresses_and_ports():
    assert server.is_loopback("127.0.0.1") and server.is_loopback("localhost")
    assert server.is_loopback("::1") and server.is_loopback("[::1]")
    assert not server.is_loopback("0.0.0.0") and not server.is_loopback("192.168.1.5")
    assert server._page_address("127.0.0.1", 8750, None) == "http://127.0.0.1:8750/"
    assert server._page_address("10.0.0.2", 80, "tok") == "http://10.0.0.2:80/?token=tok"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(UserError, match="cannot listen"):
            server._listening_socket("127.0.0.1", taken.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# Export


def test_labels_export(setup):
    client, _campaign, labels = open_app(setup)
    answers = [
        ("label", [XSS, "Male speech, man speaking"]),
        ("skip", []),
        ("label", ["dog"]),
    ]
    for kind, given in answers:
        assert (
            give(client, "tab-a", claim(client, "tab-a"), kind=kind, labels=given).status_code
            == 200
        )
    labels.close()

    out = setup.root / "export"
    result = CliRunner().invoke(
        cli_app, ["labels", "export", str(setup.run), "--format", "csv", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out / "answers.csv", keep_default_na=False)
    # One row per label; the skip keeps one row with an empty label; pending rows have no kind.
    assert list(zip(rows["cluster_id"], rows["kind"], rows["label"], strict=True)) == [
        (3, "label", XSS),
        (3, "label", "Male speech, man speaking"),
        (0, "skip", ""),
        (4, "label", "dog"),
        (1, "", ""),
        (5, "", ""),
    ]
    assert list(rows["state"]) == ["answered"] * 4 + ["pending"] * 2
    assert rows.loc[0, "media_path"] == str(setup.media[1].resolve())
    assert rows.loc[0, "time_s"] == 3.0 and rows.loc[0, "cluster_size"] == 3
    assert rows.loc[0, "annotator"] == "ann" and rows.loc[0, "answered_at"].endswith("+00:00")
    windows = pd.read_csv(out / "windows.csv", keep_default_na=False)
    # Cluster 3 (windows 8-10) got two labels, cluster 4 (windows 11, 12) one; the skip none.
    assert list(zip(windows["window_index"], windows["label"], strict=True)) == [
        (8, XSS),
        (8, "Male speech, man speaking"),
        (9, XSS),
        (9, "Male speech, man speaking"),
        (10, XSS),
        (10, "Male speech, man speaking"),
        (11, "dog"),
        (12, "dog"),
    ]
    assert list(windows["time_s"][:6:2]) == [2.0, 3.0, 4.0]

    result = CliRunner().invoke(cli_app, ["labels", "export", str(setup.run), "--format", "json"])
    assert result.exit_code == 0, result.output
    folder = setup.run / "labels" / "cluster"
    answers_json = json.loads((folder / "answers.json").read_text(encoding="utf-8"))
    assert answers_json[0]["labels"] == [XSS, "Male speech, man speaking"]
    assert answers_json[4]["labels"] == [] and answers_json[4]["kind"] is None
    windows_json = json.loads((folder / "windows.json").read_text(encoding="utf-8"))
    assert [(w["window_index"], w["cluster_id"], w["labels"]) for w in windows_json][-2:] == [
        (11, 4, ["dog"]),
        (12, 4, ["dog"]),
    ]

    bad = CliRunner().invoke(cli_app, ["labels", "export", str(setup.run), "--format", "xml"])
    assert bad.exit_code != 0
