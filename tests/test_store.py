"""Feature store: writing chunks, reading windows back, atomicity, locking, labels.

Synthetic arrays only: every stored value is a function of (media, window) so a read can be
checked against what was written.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal

import numpy as np
import pytest
from typer.testing import CliRunner

import coincide
from coincide.cli.commands import app
from coincide.errors import UserError
from coincide.store import NoFrameError
from coincide.store.chunk_files import MediaSource, Spool
from coincide.store.layout import CHUNKS_DIR, TEMP_PREFIX
from coincide.store.media_labels import (
    LabelsCsv,
    match_labels,
    merge_labels,
    read_labels,
    read_labels_csv,
)
from coincide.store.writer import MediaRecord, StoreWriter, store_lock

FRONTEND = {"sample_rate": 16000, "n_mels": 64, "window_frames": 96, "frame_size": 128}


def record(media_id: str, n: int, framed: np.ndarray | None, seed: int) -> MediaRecord:
    """A media file of n windows whose logmel window k is filled with seed + k / 100 and whose
    frame k is filled with (seed * 10 + k) % 256; framed: which windows have a frame (None: no
    video at all)."""
    logmel = np.empty((n, 64, 96), np.float32)
    logmel[:] = (seed + np.arange(n) / 100).astype(np.float32)[:, None, None]
    frames = None
    if framed is not None:
        frames = np.zeros((n, 128, 128, 3), np.uint8)
        frames[:] = ((seed * 10 + np.arange(n)) % 256).astype(np.uint8)[:, None, None, None]
        frames[~framed] = 0
    return MediaRecord(
        media_id=media_id,
        media_path=f"/media/{media_id}.mp4",
        size=1000 + n,
        mtime_ns=seed,
        duration_s=n + 0.5,
        logmel=logmel,
        frames=frames,
        has_frame=np.zeros(n, bool) if framed is None else framed.copy(),
        time_s=np.arange(n, dtype=np.float64),
    )


@pytest.fixture
def store_path(tmp_path):
    """A store of three media in two chunks (chunk target 5 windows):
    a: 4 windows, all framed; b: 3 windows, no video; c: 5 windows, frames for windows 0-2."""
    path = tmp_path / "store"
    with StoreWriter(path, FRONTEND, chunk_windows=5) as writer:
        assert writer.add(record("a", 4, np.ones(4, bool), seed=1))
        assert writer.add(record("b", 3, None, seed=2))  # 7 windows buffered: chunk 0 = a, b
        assert writer.add(record("c", 5, np.array([1, 1, 1, 0, 0], bool), seed=3))  # chunk 1
    return path


def test_round_trip_values_and_index(store_path):
    store = coincide.open_store(store_path)
    assert len(store) == 12
    assert store.chunk_ids() == [0, 1]
    assert store.chunk_range(0) == range(0, 7) and store.chunk_range(1) == range(7, 12)

    index = store.index
    assert list(index.columns[:5]) == ["media_path", "media_id", "time_s", "has_frame", "labels"]
    assert list(index["media_id"]) == ["a"] * 4 + ["b"] * 3 + ["c"] * 5
    assert list(index["time_s"]) == [0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4]
    assert list(index["has_frame"]) == [True] * 4 + [False] * 3 + [True] * 3 + [False] * 2
    assert index["media_path"].iloc[5] == "/media/b.mp4"
    assert all(labels == [] for labels in index["labels"])

    window = store.logmel[5]  # b, window 1
    assert window.shape == (64, 96) and window.dtype == np.float32
    np.testing.assert_allclose(window, 2.01)
    frame = store.frames[9]  # c, window 2
    assert frame.shape == (128, 128, 3) and frame.dtype == np.uint8
    assert (frame == 32).all()
    assert (store.frames[-3] == 32).all()  # negative positions count from the end

    np.testing.assert_array_equal(store.windows_of("c"), np.arange(7, 12))
    media = store.media.set_index("media_id")
    assert media.loc["c", "first_window"] == 7 and media.loc["c", "n_frames"] == 3
    assert not media.loc["b", "has_video"] and media.loc["a", "duration_s"] == 4.5


def test_slices_and_index_arrays_stack_across_chunks(store_path):
    store = coincide.open_store(store_path)
    expected = np.array([1.0, 1.01, 1.02, 1.03, 2.0, 2.01, 2.02, 3.0, 3.01, 3.02, 3.03, 3.04])
    np.testing.assert_allclose(store.logmel[:][:, 0, 0], expected.astype(np.float32))
    np.testing.assert_allclose(store.logmel[5:9][:, 3, 3], expected[5:9].astype(np.float32))
    picked = store.logmel[[11, 0, 6]]
    assert picked.shape == (3, 64, 96)
    np.testing.assert_allclose(picked[:, 0, 0], expected[[11, 0, 6]].astype(np.float32))
    frames = store.frames[np.array([8, 1])]
    assert frames.shape == (2, 128, 128, 3) and list(frames[:, 0, 0, 0]) == [31, 11]
    mask = store.index["has_frame"].to_numpy()
    assert store.frames[mask].shape == (7, 128, 128, 3)
    assert store.logmel[[]].shape == (0, 64, 96)
    with pytest.raises(IndexError):
        store.logmel[12]
    with pytest.raises(IndexError):
        store.logmel[[0, -13]]


def test_frame_of_a_window_without_frame_is_a_clear_error(store_path):
    store = coincide.open_store(store_path)
    with pytest.raises(NoFrameError) as info:
        store.frames[4]  # b has no video
    assert "window 4" in str(info.value) and "/media/b.mp4" in str(info.value)
    with pytest.raises(KeyError, match="has no frame"):
        store.frames[[7, 10]]  # c window 3: after its video ended


def test_arrays_are_read_through_memory_maps_and_the_store_pickles(store_path):
    store = coincide.open_store(store_path)
    logmel = store.chunk_array(1, "logmel")
    assert isinstance(logmel, np.memmap) and not logmel.flags.writeable
    assert logmel.shape == (5, 64, 96)
    assert store.chunk_array(0, "frames").shape == (4, 128, 128, 3)  # only a's 4 frames
    np.testing.assert_array_equal(store.chunk_frame_rows(1), [0, 1, 2, -1, -1])
    assert len(store.index) == 12
    clone = pickle.loads(pickle.dumps(store))  # e.g. into a DataLoader worker
    assert clone._maps == {}  # maps are reopened per process, never pickled
    assert "index" not in clone.__dict__  # nor are the cached tables
    np.testing.assert_array_equal(clone.logmel[3:9], store.logmel[3:9])
    np.testing.assert_array_equal(clone.frames[0], store.frames[0])


def test_same_content_is_stored_once(store_path):
    with StoreWriter(store_path, FRONTEND, chunk_windows=5) as writer:
        assert writer.has_media("a")
        assert not writer.add(record("a", 4, np.ones(4, bool), seed=9))
        assert writer.add(record("d", 2, None, seed=4))
    store = coincide.open_store(store_path)
    assert len(store) == 14 and store.chunk_ids() == [0, 1, 2]
    np.testing.assert_allclose(store.logmel[0], 1.0)  # the first copy of "a" is kept


def test_half_written_chunk_is_invisible_and_cleaned_up(store_path):
    # What a writer killed inside flush() leaves: a temp folder with partial files.
    debris = store_path / CHUNKS_DIR / f"{TEMP_PREFIX}000002-999"
    debris.mkdir()
    (debris / "logmel.npy").write_bytes(b"partial")
    stray = store_path / f"{TEMP_PREFIX}labels.json.999"
    stray.write_text("{")
    assert len(coincide.open_store(store_path)) == 12
    with StoreWriter(store_path, FRONTEND):
        assert not debris.exists() and not stray.exists()
    assert len(coincide.open_store(store_path)) == 12


def test_an_interrupted_writer_commits_nothing_of_its_buffer(store_path):
    with pytest.raises(RuntimeError), StoreWriter(store_path, FRONTEND) as writer:
        writer.add(record("d", 2, None, seed=4))
        raise RuntimeError("killed")
    assert len(coincide.open_store(store_path)) == 12


def _write_in_blocks(sink, rec: MediaRecord, block: int) -> None:
    for start in range(0, rec.n_windows, block):
        part = slice(start, start + block)
        frames = None if rec.frames is None else rec.frames[part]
        sink.write(rec.logmel[part], frames, rec.has_frame[part], rec.time_s[part])


def test_a_media_file_written_in_blocks_then_discarded_leaves_nothing(tmp_path):
    """Blocks go straight to the open chunk's files; a file given up half-way is cut back out,
    and the chunk is as if it had never been written."""
    framed = np.array([1, 0, 1, 1, 0], bool)
    a, b, c = (
        record("a", 4, np.ones(4, bool), 1),
        record("b", 5, framed, 2),
        record("c", 3, None, 3),
    )
    reference = tmp_path / "reference"
    with StoreWriter(reference, FRONTEND, chunk_windows=100) as writer:
        writer.add(a)
        writer.add(c)

    path = tmp_path / "store"
    with StoreWriter(path, FRONTEND, chunk_windows=100) as writer:
        writer.add(a)
        sink = writer.media(MediaSource("b", "/media/b.mp4", 1005, 2))
        _write_in_blocks(sink, b, block=2)  # 5 windows, 3 frames on disk
        open_chunk = next((path / CHUNKS_DIR).glob(f"{TEMP_PREFIX}*"))
        assert (open_chunk / "logmel.npy").stat().st_size > 9 * 64 * 96 * 4
        sink.discard()
        assert not writer.has_media("b")
        sink = writer.media(MediaSource("c", "/media/c.mp4", 1003, 3))
        _write_in_blocks(sink, c, block=2)
        sink.finish(c.duration_s)
    assert store_files(path) == store_files(reference)
    store = coincide.open_store(path)
    assert list(store.index["media_id"]) == ["a"] * 4 + ["c"] * 3
    np.testing.assert_allclose(store.logmel[4:7][:, 0, 0], [3.0, 3.01, 3.02])
    assert (store.frames[3] == 13).all()


def test_a_spooled_media_file_is_stored_as_if_added_whole(tmp_path):
    framed = np.array([1, 0, 1, 1, 0], bool)
    records = [record("a", 4, np.ones(4, bool), 1), record("b", 5, framed, 2)]
    reference = tmp_path / "reference"
    with StoreWriter(reference, FRONTEND, chunk_windows=6) as writer:
        for rec in records:
            writer.add(rec)
    path = tmp_path / "store"
    taken = []
    with StoreWriter(path, FRONTEND, chunk_windows=6) as writer:
        for i, rec in enumerate([*records, records[0]]):  # the third is the same content again
            source = MediaSource(rec.media_id, rec.media_path, rec.size, rec.mtime_ns)
            spool = Spool(tmp_path / f"spool-{i}", FRONTEND, source)
            _write_in_blocks(spool, rec, block=3)
            spooled = spool.finish(rec.duration_s)
            taken.append(writer.add_spooled(spooled))
            assert not spooled.folder.exists()  # the spool is deleted once taken
    assert taken == [True, True, False]
    assert store_files(path) == store_files(reference)


def store_files(path) -> dict[str, bytes]:
    """Every committed file of a store, by its path in the store."""
    return {
        str(f.relative_to(path)): f.read_bytes()
        for f in sorted((path / CHUNKS_DIR).rglob("*"))
        if f.is_file()
    }


def test_one_writer_at_a_time(store_path):
    with StoreWriter(store_path, FRONTEND), pytest.raises(UserError, match="another coincide"):
        StoreWriter(store_path, FRONTEND).__enter__()
    with store_lock(store_path):  # released again after the writer left
        pass


def _hold_lock_forever(root, held) -> None:
    with store_lock(root):
        held.set()
        signal.pause()


def test_the_lock_of_another_process_is_refused_and_freed_when_it_is_killed(tmp_path):
    context = multiprocessing.get_context("fork")
    held = context.Event()
    holder = context.Process(target=_hold_lock_forever, args=(tmp_path / "s", held))
    holder.start()
    try:
        assert held.wait(30)
        with pytest.raises(UserError, match="another coincide process is writing"):
            StoreWriter(tmp_path / "s", FRONTEND).__enter__()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
    with StoreWriter(tmp_path / "s", FRONTEND) as writer:  # the kernel released the dead lock
        writer.add(record("a", 2, None, seed=1))
    assert len(coincide.open_store(tmp_path / "s")) == 2


def test_store_made_with_other_frontend_parameters_is_refused(store_path):
    other = {**FRONTEND, "n_mels": 128}
    with pytest.raises(UserError, match="other frontend parameters \\(n_mels differ\\)"):
        StoreWriter(store_path, other).__enter__()


def test_refuses_folders_that_are_not_stores(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match="not a feature store"):
        StoreWriter(tmp_path / "photos", FRONTEND).__enter__()
    with pytest.raises(UserError, match="not a coincide feature store"):
        coincide.open_store(tmp_path / "missing")


def test_empty_store_reads_as_empty(tmp_path):
    with StoreWriter(tmp_path / "s", FRONTEND):
        pass
    store = coincide.open_store(tmp_path / "s")
    assert len(store) == 0 and store.chunk_ids() == [] and len(store.index) == 0
    assert store.logmel[:].shape == (0, 64, 96)
    assert len(store.media) == 0 and list(store.media["first_window"]) == []
    result = CliRunner().invoke(app, ["info", "--store", str(tmp_path / "s")])
    assert result.exit_code == 0 and result.exception is None, result.output
    assert "0" in result.output


def test_labels_merge_as_a_union_and_show_in_the_index(store_path):
    assert merge_labels(store_path, {"a": ["dog"], "c": ["rain", "wind"]}) == 3
    assert merge_labels(store_path, {"a": ["bark", "dog"]}) == 1  # dog was already there
    assert merge_labels(store_path, {}) == 0
    assert read_labels(store_path) == {"a": ["bark", "dog"], "c": ["rain", "wind"]}
    store = coincide.open_store(store_path)
    assert store.index["labels"].iloc[0] == ["bark", "dog"]
    assert store.index["labels"].iloc[4] == []
    assert store.index["labels"].iloc[11] == ["rain", "wind"]
    assert store.media.set_index("media_id").loc["c", "labels"] == ["rain", "wind"]


def test_labels_csv_paths_relative_to_the_csv_and_matching(tmp_path):
    (tmp_path / "clips").mkdir()
    media = tmp_path / "clips" / "one clip.wav"
    media.write_bytes(b"content one")
    copy = tmp_path / "copy.wav"
    copy.write_bytes(b"content one")
    csv = tmp_path / "clips" / "labels.csv"
    csv.write_text(
        "path,label\n"
        "one clip.wav,dog\n"
        f"{media},bark\n"
        "../copy.wav,pet\n"  # another path to the same content: matched by hash
        "missing.wav,cat\n"
        "one clip.wav,\n",
        encoding="utf-8",
    )
    parsed = read_labels_csv(csv)
    assert parsed.rows[0] == (media.resolve(), "dog")
    assert parsed.rows[2] == (copy.resolve(), "pet")
    assert parsed.blank_lines == [6]
    from coincide.store.media_id import media_id_of

    media_id = media_id_of(media)
    match = match_labels(parsed, {str(media.resolve()): media_id}, {media_id})
    assert match.labels == {media_id: {"dog", "bark", "pet"}}
    assert match.unmatched == [((tmp_path / "clips" / "missing.wav").resolve(), "cat")]
    assert match_labels(LabelsCsv(csv), {}, set()).labels == {}


def test_labels_csv_without_the_columns_is_a_user_error(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("file,class\na.wav,dog\n")
    with pytest.raises(UserError, match="needs `path` and `label`"):
        read_labels_csv(csv)
    with pytest.raises(UserError, match="cannot read the labels file"):
        read_labels_csv(tmp_path / "nope.csv")
    csv.write_text("path,label,label\na.wav,dog,bark\n")
    with pytest.raises(UserError, match="names the column 'label' twice"):
        read_labels_csv(csv)


def test_labels_with_control_characters_are_refused(tmp_path, store_path):
    csv = tmp_path / "labels.csv"
    csv.write_text('path,label\na.wav,dog\nb.wav,"two\nlines"\n', encoding="utf-8")
    with pytest.raises(UserError, match="line 3 contains the control character"):
        read_labels_csv(csv)
    with pytest.raises(UserError, match="control character"):
        merge_labels(store_path, {"a": ["tab\tbed"]})
    assert read_labels(store_path) == {}
