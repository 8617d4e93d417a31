"""`coincide search`: the store's index, queries by window and by media, the HTML page."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from coincide.cli.commands import app
from coincide.errors import UserError
from coincide.media.decode import decode_audio
from coincide.models.inference import load_model
from coincide.models.search_index import (
    INDEX_FILE,
    META_FILE,
    Query,
    build_index,
    ensure_index,
    parse_query,
    read_excerpt,
    search,
    search_index,
    unit_rows,
)
from coincide.stages.ingest import IngestSettings
from coincide.stages.ingest import run as ingest
from coincide.stages.search import SearchSettings
from coincide.stages.search import run as run_search
from coincide.store.features import open_store
from inference_helpers import TinyRun, make_tiny_run, quiet, write_noise_wav

torch.set_num_threads(1)
# A file name that must be escaped in HTML.
ODD_NAME = "a<b>&'c\".wav"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    made = make_tiny_run(tmp_path_factory.mktemp("search"))
    shutil.copy(made.media / "noise1.wav", made.media / ODD_NAME)
    # Same content as noise1.wav: ingestion stores it once, under the first path; give the odd
    # name its own content by appending a second of silence.
    with wave.open(str(made.media / "noise1.wav"), "rb") as source:
        params, frames = source.getparams(), source.readframes(source.getnframes())
    with wave.open(str(made.media / ODD_NAME), "wb") as odd:
        odd.setparams(params)
        odd.writeframes(frames + bytes(2 * params.framerate))
    ingest(IngestSettings((made.media,), made.store), console=quiet())
    return made


@pytest.fixture(scope="module")
def model(tiny: TinyRun):
    return load_model(tiny.run, device="cpu")


def brute_force(embeddings: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """Row ids of the k smallest cosine distances, by NumPy."""
    distance = 1.0 - unit_rows(embeddings) @ unit_rows(query[None])[0]
    return np.argsort(distance, kind="stable")[:k]


def nearest_others(embeddings: np.ndarray, window: int, k: int) -> np.ndarray:
    """The k smallest cosine distances from a window to the other windows, by NumPy."""
    distance = 1.0 - unit_rows(embeddings) @ unit_rows(embeddings[window][None])[0]
    return np.sort(np.delete(distance, window))[:k]


def test_a_store_window_finds_its_neighbours_but_never_itself(tiny: TinyRun, model) -> None:
    store = open_store(tiny.store)
    embeddings = model.embed_logmel(store.logmel[:])
    for window in range(len(store)):
        hits = search(model, store, Query(window=window), k=5)
        assert window not in [h.window for h in hits]
        assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
        np.testing.assert_allclose(
            [h.distance for h in hits], nearest_others(embeddings, window, 5), atol=1e-5
        )
        first = hits[0].window
        assert hits[0].media_path == store.index["media_path"].iat[first]
        assert hits[0].time_s == store.index["time_s"].iat[first]
    # The saved index is the one read the next time; it agrees with a brute-force search.
    folder = tiny.run.resolve() / "search" / "store"
    assert (folder / INDEX_FILE).is_file() and (folder / META_FILE).is_file()
    index = ensure_index(model, store)
    assert not index.built
    embeddings = np.asarray(index.embeddings)
    np.testing.assert_allclose(embeddings, model.embed_logmel(store.logmel[:]), atol=1e-5)
    for window in range(len(store)):
        _, ids = search_index(index.index, embeddings[window], 6)
        exact = brute_force(embeddings, embeddings[window], 6)
        np.testing.assert_allclose(
            np.sort(1 - unit_rows(embeddings[ids[0]]) @ unit_rows(embeddings[window][None])[0]),
            np.sort(1 - unit_rows(embeddings[exact]) @ unit_rows(embeddings[window][None])[0]),
            atol=1e-6,
        )


def test_a_second_of_media_finds_its_own_window_first(tiny: TinyRun, model) -> None:
    store = open_store(tiny.store)
    path = (tiny.media / "4-164661-A-12.flac").resolve()
    windows = np.flatnonzero(store.index["media_path"] == str(path))
    embeddings = np.asarray(ensure_index(model, store).embeddings)
    # The fire window farthest from every other window, so that the test does not hang on
    # float rounding between near-duplicates.
    unit = unit_rows(embeddings)
    distance = 1.0 - unit @ unit.T
    np.fill_diagonal(distance, np.inf)
    window = int(windows[np.argmax(distance[windows].min(axis=1))])
    seconds = float(store.index["time_s"].iat[window])
    query = parse_query(f"{path}@{seconds + 0.7}", None)
    hits = search(model, store, query, k=3)
    # Its own window would be hit #1 at distance 0: it is left out, the next ones follow.
    assert window not in [h.window for h in hits]
    np.testing.assert_allclose(
        [h.distance for h in hits], nearest_others(embeddings, window, 3), atol=1e-5
    )
    assert hits[0].distance > 1e-6  # its own window would be at 0
    apart = search(model, store, query, k=len(store), exclude_same_media=True)
    assert len(apart) == len(store) - len(windows)
    assert not {h.window for h in apart} & set(windows.tolist())
    assert all(h.media_path != str(path) for h in apart)
    # The whole file as the query: the mean of its windows' unit embeddings.
    whole = search(model, store, parse_query(str(path), None), k=len(store))
    mean = unit_rows(embeddings[windows]).mean(axis=0)
    assert [h.window for h in whole[:3]] == list(brute_force(embeddings, mean, 3))


def test_an_ivf_index_finds_neighbours_of_clustered_vectors() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 16))
    vectors = (centres[rng.integers(20, size=3000)] + 0.3 * rng.normal(size=(3000, 16))).astype(
        np.float32
    )
    index = build_index(vectors, exact_max=1000)
    assert index.nlist == 55 and index.nprobe == 16
    queries = vectors[:50]
    distance, ids = search_index(index, queries, 10)
    assert (ids[:, 0] == np.arange(50)).all()
    np.testing.assert_allclose(distance[:, 0], 0.0, atol=1e-6)
    exact = np.stack([brute_force(vectors, q, 10) for q in queries])
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact, strict=True)])
    assert recall >= 0.9
    # Scanning every list is exact.
    _, all_lists = search_index(index, queries, 10, nprobe=index.nlist)
    assert (np.sort(all_lists, axis=1) == np.sort(exact, axis=1)).all()


def test_the_index_is_rebuilt_when_the_store_grows(tiny: TinyRun, model, tmp_path: Path) -> None:
    store_path = tmp_path / "store"
    shutil.copytree(tiny.store, store_path)
    first = ensure_index(model, open_store(store_path))
    assert first.built
    assert not ensure_index(model, open_store(store_path)).built
    extra = tmp_path / "extra"
    extra.mkdir()
    write_noise_wav(extra / "more.wav", 2.0, seed=7)
    ingest(IngestSettings((extra,), store_path), console=quiet())
    grown = open_store(store_path)
    again = ensure_index(model, grown)
    assert again.built
    assert again.index.ntotal == len(grown) == len(first.embeddings) + 2


def test_excerpts_come_from_the_right_time(tiny: TinyRun) -> None:
    path = tiny.media / "4-164661-A-12.flac"
    whole = decode_audio(path)
    excerpt = read_excerpt(path, 2.0, 1.5)
    assert len(excerpt) == 24000
    # Seeking restarts the resampler: a few samples at the edges may differ slightly.
    reference = whole[32000:56000]
    middle = slice(200, -200)
    assert np.abs(excerpt[middle] - reference[middle]).max() < 1e-3
    assert np.corrcoef(excerpt, reference)[0, 1] > 0.999


def test_the_command_prints_hits_and_writes_a_page(tiny: TinyRun, tmp_path: Path) -> None:
    store = open_store(tiny.store)
    odd = str((tiny.media / ODD_NAME).resolve())
    window = int(np.flatnonzero(store.index["media_path"] == odd)[1])
    page = tmp_path / "hits.html"
    args = ["search", str(tiny.run), "--store", str(tiny.store), "--query-window", str(window)]
    result = CliRunner().invoke(app, [*args, "--top", "3", "--html", str(page)])
    assert result.exit_code == 0, result.output
    assert f"Nearest windows to store window {window} (its own window left out)" in result.output
    # Not on a terminal: every path is printed whole, on the line of its hit.
    hits = search(load_model(tiny.run, device="cpu"), store, Query(window=window), k=3)
    lines = result.stdout.splitlines()
    for hit in hits:
        assert any(hit.media_path in line and f"{hit.distance:.4g}" in line for line in lines)
    csv_out = CliRunner().invoke(app, [*args, "--top", "3", "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(csv_out.stdout)))
    assert [int(r["window"]) for r in rows] == [h.window for h in hits]
    assert [r["media_path"] for r in rows] == [h.media_path for h in hits]
    # The CSV holds 6 significant digits.
    assert [float(r["distance"]) for r in rows] == pytest.approx(
        [h.distance for h in hits], rel=1e-5
    )
    json_out = json.loads(CliRunner().invoke(app, [*args, "--format", "json"]).stdout)
    assert [h["window"] for h in json_out["hits"][:3]] == [h.window for h in hits]
    assert json_out["hits"][0]["rank"] == 1 and window not in [
        h["window"] for h in json_out["hits"]
    ]
    assert json_out["settings"]["settings"]["query_window"] == window
    text = page.read_text(encoding="utf-8")
    assert text.count("<audio") == 4  # the query and three hits
    script = text.split('<script type="application/json" id="settings">')[1].split("</script>")[0]
    assert json.loads(script)["settings"]["html_out"] == str(page.absolute())
    assert "a&lt;b&gt;&amp;&#x27;c&quot;.wav" in text
    assert ODD_NAME not in text
    players = re.findall(r'<audio controls preload="none" src="([^"]+)"', text)
    assert players[0] == "hits_files/query.wav"
    for source in players:
        with wave.open(str(tmp_path / source), "rb") as excerpt:
            seconds = excerpt.getnframes() / excerpt.getframerate()
        # The window (0.96 s) with up to a second of context on each side.
        assert 0.96 <= seconds <= 2.97
    with wave.open(str(tmp_path / players[1]), "rb") as first_hit:
        assert first_hit.getnframes() == round(2.96 * 16000)  # window 1: full context


def test_queries_that_cannot_work(tiny: TinyRun, model) -> None:
    store = open_store(tiny.store)
    with pytest.raises(UserError, match="either --query"):
        parse_query("x.wav", 3)
    with pytest.raises(UserError, match="either --query"):
        parse_query(None, None)
    with pytest.raises(UserError, match="not a number of seconds"):
        parse_query("missing.wav@abc", None)
    assert parse_query("dog.wav@12.5", None) == Query(media=Path("dog.wav"), seconds=12.5)
    with pytest.raises(UserError, match="is not in 0"):
        search(model, store, Query(window=len(store)), k=3)
    with pytest.raises(UserError, match="does not exist"):
        search(model, store, Query(media=tiny.media / "nothing.wav"), k=3)


def test_a_query_is_checked_before_the_index_is_built(tiny: TinyRun, model, tmp_path) -> None:
    fresh = tmp_path / "fresh_store"
    shutil.copytree(tiny.store, fresh)
    store = open_store(fresh)
    index = model.home / "search" / "fresh_store"
    with pytest.raises(UserError, match="one-second windows"):
        search(model, store, Query(media=tiny.media / "noise0.wav", seconds=30.0), k=3)
    with pytest.raises(UserError, match="is not in 0"):
        search(model, store, Query(window=len(store)), k=3)
    assert not index.exists()
    with pytest.raises(UserError, match="query media nothing.wav does not exist"):
        run_search(SearchSettings(tiny.run, fresh, "nothing.wav@2"), console=quiet())
    assert not index.exists()


def test_media_queries_need_the_frontend_the_store_was_made_with(
    tiny: TinyRun, model, tmp_path: Path
) -> None:
    old = tmp_path / "old_store"
    shutil.copytree(tiny.store, old)
    header = json.loads((old / "store.json").read_text(encoding="utf-8"))
    header["frontend"]["fmax"] = 8000.0
    del header["frontend"]["mel_norm"]  # a store made before this setting was recorded
    (old / "store.json").write_text(json.dumps(header), encoding="utf-8")
    query = Query(media=tiny.media / "noise0.wav", seconds=1.0)
    with pytest.raises(UserError, match=r"other frontend settings \(fmax, mel_norm\)"):
        search(model, open_store(old), query, k=3)
    assert 2 not in [h.window for h in search(model, open_store(old), Query(window=2), k=3)]
