"""`coincide ingest`, `info` and `add-labels` on small media written with PyAV in the test.

The command line is driven in-process with typer's CliRunner, except where the real process
matters (exit codes of the console script, kill -9 in the middle of a run).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import coincide
from coincide.cli.commands import app, main
from coincide.errors import UserError
from coincide.media.decode import extract_features
from coincide.store.media_id import media_id_of
from coincide.store.writer import store_lock

sys.path.insert(0, str(Path(__file__).parent))
import mediagen  # noqa: E402

torch.set_num_threads(1)


def ingest(*args: str | Path):
    result = CliRunner().invoke(app, ["ingest", *map(str, args)])
    return result


def store_content(path: Path) -> dict:
    """Everything a store holds, independent of chunking: (media_id, time_s) -> arrays, labels."""
    store = coincide.open_store(path)
    index = store.index
    windows = {}
    for i, (media_id, t, has_frame) in enumerate(
        zip(index["media_id"], index["time_s"], index["has_frame"], strict=True)
    ):
        assert (media_id, t) not in windows, "a window is stored twice"
        frame = store.frames[i].tobytes() if has_frame else None
        windows[(media_id, t)] = (store.logmel[i].tobytes(), frame)
    media = store.media.set_index("media_id")
    return {
        "windows": windows,
        "paths": media["media_path"].to_dict(),
        "labels": store.labels,
    }


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """Good media of several kinds, with awkward names, in nested folders."""
    root = tmp_path_factory.mktemp("library")
    (root / "sub dir").mkdir()
    mediagen.write_video(root / "clip one.mp4", "mp4", seconds=3, width=64, height=48)
    mediagen.write_video(root / "sub dir" / "bär é.mkv", "mkv", seconds=2, width=64, height=48)
    mediagen.write_audio(root / "tone.wav", "wav", seconds=2)
    mediagen.write_audio(root / "sub dir" / "LOUD.FLAC", "flac", seconds=3)
    (root / "notes.txt").write_text("not media, no media extension: never looked at")
    return root


def test_ingest_stores_every_window_and_a_rerun_adds_nothing(library, tmp_path):
    store_path = tmp_path / "store"
    result = ingest(library, "--store", store_path)
    assert result.exit_code == 0, result.output
    assert "4 files: 4 ingested (10 windows)" in result.output

    store = coincide.open_store(store_path)
    assert len(store) == 10
    index = store.index
    clip = str((library / "clip one.mp4").resolve())
    assert sorted(set(index["media_path"])) == sorted(
        str(p.resolve())
        for p in [
            library / "clip one.mp4",
            library / "sub dir" / "bär é.mkv",
            library / "tone.wav",
            library / "sub dir" / "LOUD.FLAC",
        ]
    )
    # The stored arrays are those of the decoder, window by window, frames where there is video.
    rows = np.flatnonzero(index["media_path"] == clip)
    features = extract_features(Path(clip))
    np.testing.assert_array_equal(store.logmel[rows], features.logmel)
    np.testing.assert_array_equal(store.frames[rows], features.frames)
    np.testing.assert_array_equal(index["time_s"].to_numpy()[rows], [0.0, 1.0, 2.0])
    assert int(index["has_frame"].sum()) == 5  # 3 s mp4 + 2 s mkv; the audio files have none

    chunks_before = sorted(p.name for p in (store_path / "chunks").iterdir())
    content_before = store_content(store_path)
    again = ingest(library, "--store", store_path)
    assert again.exit_code == 0, again.output
    assert "0 ingested (0 windows), 4 already in the store" in again.output
    assert sorted(p.name for p in (store_path / "chunks").iterdir()) == chunks_before
    assert store_content(store_path) == content_before
    report = json.loads((store_path / "ingest_report.json").read_text())
    assert [run["ingested"] for run in report["runs"]] == [4, 0]
    assert report["runs"][-1]["settings"]["store"] == str(Path(store_path).absolute())


def test_same_content_under_another_path_is_a_duplicate(library, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(library / "tone.wav", folder / "a.wav")
    shutil.copy(library / "tone.wav", folder / "b.wav")
    result = ingest(folder, "--store", tmp_path / "store")
    assert result.exit_code == 0, result.output
    assert f"duplicate {folder / 'b.wav'}: same content as {folder / 'a.wav'}" in result.output
    store = coincide.open_store(tmp_path / "store")
    assert len(store) == 2 and set(store.index["media_path"]) == {str(folder / "a.wav")}


def test_parallel_workers_give_the_same_store(library, tmp_path):
    assert ingest(library, "--store", tmp_path / "one", "--chunk-windows", "3").exit_code == 0
    result = ingest(library, "--store", tmp_path / "two", "--chunk-windows", "3", "--workers", "2")
    assert result.exit_code == 0, result.output
    one, two = coincide.open_store(tmp_path / "one"), coincide.open_store(tmp_path / "two")
    assert one.chunk_ids() == two.chunk_ids() == [0, 1, 2]
    assert list(one.index["media_id"]) == list(two.index["media_id"])
    np.testing.assert_array_equal(one.logmel[:], two.logmel[:])
    assert store_content(tmp_path / "one") == store_content(tmp_path / "two")


def write_float_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    """A mono 32-bit float WAV (format 3, IEEE float), which the wave module cannot write."""
    data = np.asarray(samples, "<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    riff = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    riff += b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(riff)) + riff)
    return path


def test_a_file_that_changes_while_read_is_skipped_then_stored_whole(
    library, tmp_path, monkeypatch
):
    """A file still being copied must not be stored under the hash of its old bytes."""
    import coincide.media.decode as decode

    media = tmp_path / "media"
    media.mkdir()
    stable = mediagen.write_audio(media / "stable.flac", "flac", seconds=2.0)
    growing = shutil.copy(library / "tone.wav", media / "copying.wav")
    whole = (library / "sub dir" / "LOUD.FLAC").read_bytes()
    real = decode.iter_features

    def copy_finishes_meanwhile(path, *args, **kwargs):
        yield from real(path, *args, **kwargs)
        if Path(path).name == "copying.wav" and not finished:
            Path(path).write_bytes(whole)  # the copy overwrites it with other content
            finished.append(True)

    finished: list[bool] = []
    monkeypatch.setattr(decode, "iter_features", copy_finishes_meanwhile)
    store_path = tmp_path / "store"
    first = ingest(media, "--store", store_path, "--workers", "1")
    assert first.exit_code == 0, first.output
    assert "changed while it was read" in first.output
    assert list(coincide.open_store(store_path).media["media_path"]) == [str(stable.resolve())]
    second = ingest(media, "--store", store_path, "--workers", "1")
    assert second.exit_code == 0, second.output
    store = coincide.open_store(store_path)
    ids = dict(zip(store.media["media_path"], store.media["media_id"], strict=True))
    assert ids[str(Path(growing).resolve())] == media_id_of(Path(growing))  # the whole file


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, library) -> tuple[Path, dict[str, str | None]]:
    """A folder of problem files; value: a reason that must be given, or None for "ingested or
    skipped with any reason"."""
    root = tmp_path_factory.mktemp("bad")
    shutil.copy(library / "tone.wav", root / "good.wav")
    (root / "random bytes.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    (root / "text.ogg").write_text("this is a text file with a media extension\n" * 20)
    (root / "empty.wav").write_bytes(b"")
    mediagen.write_video(
        root / "silent film.mp4", "mp4", seconds=2, audio=False, width=64, height=48
    )
    long_mp4 = mediagen.write_video(root / "whole.mp4", "mp4", seconds=4, width=64, height=48)
    data = long_mp4.read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    long_mkv = mediagen.write_video(root / "whole.mkv", "mkv", seconds=4, width=64, height=48)
    data = long_mkv.read_bytes()
    (root / "truncated.mkv").write_bytes(data[: len(data) // 2])
    long_mkv.unlink()
    long_mp4.unlink()
    (root / "dangling.flac").symlink_to(root / "does not exist.flac")
    os.mkfifo(root / "pipe.wav")
    # A name that is not UTF-8 (Latin-1 "café"): it cannot be written to the index as text.
    shutil.copy(library / "tone.wav", os.path.join(os.fsencode(root), b"caf\xe9.wav"))
    tone = np.sin(np.arange(48000, dtype=np.float32) / 10) * 0.3
    tone[20000:20100] = np.nan  # a float WAV can carry NaN: it would poison training
    write_float_wav(root / "nan.wav", tone)
    locked = shutil.copy(library / "sub dir" / "LOUD.FLAC", root / "locked.flac")
    os.chmod(locked, 0)
    expected = {
        "good.wav": "",  # ingested
        "random bytes.mp4": None,
        "text.ogg": None,
        "empty.wav": "empty file",
        "silent film.mp4": "no audio stream",
        "truncated.mp4": None,
        "truncated.mkv": None,
        "dangling.flac": "cannot read",
        "pipe.wav": "not a regular file",
        "nan.wav": "non-finite values (NaN or inf) at 1.00 s",
        # root reads any file, so the locked file is only unreadable for other users
        "locked.flac": "" if os.geteuid() == 0 else "cannot read",
    }
    return root, expected


def test_every_bad_input_is_ingested_or_skipped_with_a_reason(bad_inputs, tmp_path):
    root, expected = bad_inputs
    store_path = tmp_path / "store"
    result = ingest(root, "--store", store_path)
    assert result.exit_code == 0, result.output
    stored = set(coincide.open_store(store_path).index["media_path"])
    report = json.loads((store_path / "ingest_report.json").read_text())
    skipped = {Path(entry["path"]).name: entry["reason"] for entry in report["skipped"]}
    for name, reason in expected.items():
        path = root / name
        shown = str(path if path.is_symlink() else path.resolve())
        if name in skipped:
            assert reason != "", f"{name} should have been ingested: {skipped[name]}"
            assert skipped[name], name
            if reason:
                assert reason in skipped[name], (name, skipped[name])
            assert f"skipped {shown}: {skipped[name]}" in result.output
        else:
            assert reason in ("", None), f"{name} should have been skipped"
            assert shown in stored, f"{name} is neither skipped nor stored"
    assert str((root / "good.wav").resolve()) in stored
    latin1 = f"{root.resolve()}/caf\\xe9.wav"
    assert f"skipped {latin1}: file name is not valid UTF-8; rename the file" in result.output
    assert skipped.pop("caf\\xe9.wav") == "file name is not valid UTF-8; rename the file"
    assert report["runs"][-1]["skipped"] == len(skipped) + 1 >= 7
    assert report["runs"][-1]["files"] == len(expected) + 1


def test_a_run_where_nothing_can_be_ingested_fails_and_loses_nothing(
    bad_inputs, library, tmp_path, monkeypatch, capsys
):
    root, _ = bad_inputs
    only_bad = tmp_path / "only bad"
    only_bad.mkdir()
    for name in ["random bytes.mp4", "text.ogg", "empty.wav"]:
        shutil.copy(root / name, only_bad / name)
    store_path = tmp_path / "store"
    assert ingest(library / "tone.wav", "--store", store_path).exit_code == 0
    before = store_content(store_path)

    # The console script's entry point: exit code 2 and one sentence, no traceback.
    monkeypatch.setattr(
        sys, "argv", ["coincide", "ingest", str(only_bad), "--store", str(store_path)]
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: none of the 3 media files could be ingested" in err
    assert "Traceback" not in err
    assert store_content(store_path) == before


def test_user_errors_name_the_problem(library, tmp_path):
    missing = ingest(tmp_path / "nowhere", "--store", tmp_path / "s")
    assert isinstance(missing.exception, UserError)
    assert "does not exist" in str(missing.exception)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    nothing = ingest(tmp_path / "docs", "--store", tmp_path / "s")
    assert isinstance(nothing.exception, UserError) and "no media files" in str(nothing.exception)
    assert not (tmp_path / "s").exists()  # nothing is created for a run that cannot start

    store_path = tmp_path / "store"
    assert ingest(library / "tone.wav", "--store", store_path).exit_code == 0
    with store_lock(store_path):
        busy = ingest(library / "tone.wav", "--store", store_path)
    assert isinstance(busy.exception, UserError)
    assert "another coincide process is writing" in str(busy.exception)


def write_labels(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
    return path


def test_labels_at_ingest_and_later(library, tmp_path):
    csv = write_labels(
        tmp_path / "labels.csv",
        [
            (str(library / "clip one.mp4"), "car"),
            (str(library / "clip one.mp4"), "engine"),  # several labels for one file
            (os.path.relpath(library / "tone.wav", tmp_path), "beep"),  # relative to the CSV
            (str(library / "gone.wav"), "ghost"),
        ],
    )
    store_path = tmp_path / "store"
    result = ingest(library, "--store", store_path, "--labels", csv)
    assert result.exit_code == 0, result.output
    assert "labels: 3 labels on 2 media" in result.output
    assert "1 rows name files that are not in the store" in result.output
    assert str(library / "gone.wav") in result.output
    index = coincide.open_store(store_path).index
    by_path = {p: labels for p, labels in zip(index["media_path"], index["labels"], strict=True)}
    assert by_path[str((library / "clip one.mp4").resolve())] == ["car", "engine"]
    assert by_path[str((library / "tone.wav").resolve())] == ["beep"]
    assert by_path[str((library / "sub dir" / "LOUD.FLAC").resolve())] == []

    # Later: a label for a file from another CSV folder; saved labels stay (union).
    (tmp_path / "more").mkdir()
    more = write_labels(
        tmp_path / "more" / "more.csv",
        [
            (str(library / "sub dir" / "LOUD.FLAC"), "loud"),
            (os.path.relpath(library / "tone.wav", tmp_path / "more"), "tone"),
        ],
    )
    later = CliRunner().invoke(
        app, ["add-labels", "--store", str(store_path), "--labels", str(more)]
    )
    assert later.exit_code == 0, later.output
    assert "labels: 2 labels on 2 media" in later.output
    index = coincide.open_store(store_path).index
    by_path = {p: labels for p, labels in zip(index["media_path"], index["labels"], strict=True)}
    assert by_path[str((library / "tone.wav").resolve())] == ["beep", "tone"]
    assert by_path[str((library / "sub dir" / "LOUD.FLAC").resolve())] == ["loud"]
    assert by_path[str((library / "clip one.mp4").resolve())] == ["car", "engine"]

    # A CSV none of whose rows names a stored file is an error, not a silent "0 labels".
    stray = write_labels(tmp_path / "more" / "stray.csv", [("/nowhere/x.wav", "x")])
    none = CliRunner().invoke(
        app, ["add-labels", "--store", str(store_path), "--labels", str(stray)]
    )
    assert isinstance(none.exception, UserError)
    assert "none of the 1 rows" in str(none.exception)

    info = CliRunner().invoke(app, ["info", "--store", str(store_path)])
    assert info.exit_code == 0, info.output
    lines = {line.strip("│ ").split("│")[0].strip(): line for line in info.output.splitlines()}
    for name, value in [("media ok", "4"), ("windows", "10"), ("windows with frames", "5")]:
        assert lines[name].split("│")[-2].strip() == value, info.output
    assert lines["media with labels"].split("│")[-2].strip() == "3"
    assert lines["hours"].split("│")[-2].strip() == f"{10 / 3600:.3f}"
    # labels per class: media, windows
    assert [c.strip() for c in lines["engine"].split("│")[1:4]] == ["engine", "1", "3"]
    assert [c.strip() for c in lines["beep"].split("│")[1:4]] == ["beep", "1", "2"]


def slow_ingest(args: list) -> None:
    """The ingest stage with every file taking at least 30 ms to examine, so that a kill lands in
    the middle of the run even on a fast machine (run in a forked child: the test's process keeps
    the real `examine`)."""
    import coincide.stages.ingest_workers as stage

    examine = stage.examine

    def slow_examine(*examine_args):
        time.sleep(0.03)
        return examine(*examine_args)

    stage.examine = slow_examine
    CliRunner().invoke(app, ["ingest", *map(str, args)])


def kill_when(chunk: Path, args: list) -> int | None:
    """Run the ingest stage in a child process, SIGKILL it as soon as `chunk` exists; returns
    the child's exit code (negative: killed by that signal)."""
    # fork: the child starts with everything imported, so the kill comes seconds earlier.
    child = multiprocessing.get_context("fork").Process(target=slow_ingest, args=(args,))
    child.start()
    deadline = time.monotonic() + 120
    while not chunk.exists() and child.is_alive() and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    return child.exitcode


def test_resume_after_kill_9_gives_the_uninterrupted_store(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    rows = []
    for i in range(16):
        path = mediagen.write_audio(folder / f"clip {i:02d}.wav", "wav", seconds=2 + i / 10)
        rows.append((path.name, f"class{i % 3}"))
    csv = write_labels(folder / "labels.csv", rows)
    args = [folder, "--chunk-windows", "2", "--labels", csv]

    reference = tmp_path / "reference"
    assert ingest(*args, "--store", reference).exit_code == 0

    # Killed twice (after the 3rd and after the 7th chunk is committed), then run to the end.
    store_path = tmp_path / "store"
    for chunk in ["000002", "000006"]:
        status = kill_when(store_path / "chunks" / chunk, [*args, "--store", store_path])
        assert status == -signal.SIGKILL, "the run finished before it could be killed"
        interrupted = coincide.open_store(store_path)  # committed chunks are readable as they are
        assert int(chunk) + 1 <= len(interrupted.chunk_ids()) < 16
        assert interrupted.labels == {}  # labels are attached at the end of a run

    result = ingest(*args, "--store", store_path)
    assert result.exit_code == 0, result.output
    assert not list((store_path / "chunks").glob(".tmp-*"))
    assert store_content(store_path) == store_content(reference)
    assert len(store_content(reference)["labels"]) == 16
    again = ingest(*args, "--store", store_path)
    assert "0 ingested" in again.output
    assert store_content(store_path) == store_content(reference)


def _descendants(pid: int) -> set[int]:
    """Pids of every process below `pid` (Linux /proc)."""
    parents: dict[int, int] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat_file.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_kill_9_of_a_parallel_ingest_takes_its_workers_with_it(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(40):
        mediagen.write_audio(folder / f"clip {i:02d}.wav", "wav", seconds=3)
    command = [sys.executable, "-m", "coincide.cli", "ingest", str(folder), "--store"]
    command += [str(tmp_path / "store"), "--workers", "2", "--chunk-windows", "2"]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        workers: set[int] = set()
        # The forkserver and its two workers, once the first chunk shows they are at work.
        while time.monotonic() < deadline and child.poll() is None:
            workers = _descendants(child.pid)
            if len(workers) >= 3 and (tmp_path / "store" / "chunks" / "000000").exists():
                break
            time.sleep(0.05)
        assert child.poll() is None and len(workers) >= 3, "ingest ended before the kill"
    finally:
        child.kill()
        child.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_running(pid) for pid in workers):
        time.sleep(0.1)
    left = [pid for pid in workers if _running(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"{len(left)} worker processes outlived the killed ingest"


def _run_limited(command: list[str], max_file_bytes: int) -> subprocess.CompletedProcess:
    """Run the console script with every file it writes capped at `max_file_bytes`
    (RLIMIT_FSIZE: a write past it fails with EFBIG, as a full disk fails with ENOSPC)."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    return subprocess.run(
        [sys.executable, "-c", "from coincide.cli.commands import main; main()", *command],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=limit,
        timeout=300,
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_full_disk_during_ingest_is_one_sentence_and_the_run_resumes(library, tmp_path, workers):
    store_path = tmp_path / "store"
    reference = tmp_path / "reference"
    # Chunks of 6 windows (about 150 KB of log-mel each) under a 100 KB cap: the first file's
    # frames (3 x 49 KB) fail, in the open chunk or in a worker's spool, after the store header
    # was written.
    args = ["ingest", str(library), "--chunk-windows", "6", "--workers", workers]
    failed = _run_limited([*args, "--store", str(store_path)], 100_000)
    assert failed.returncode == 2, failed.stderr
    assert "Traceback" not in failed.stderr
    message = " ".join(failed.stderr.split())
    # Plain progress lines (one every few seconds off a terminal) may come before the error.
    assert "error: " in message and message.endswith("run the same command again."), message
    message = message[message.index("error: ") :]
    assert message.startswith("error: out of disk space"), message
    assert "run the same command again" in message
    assert not list((store_path / "chunks").glob(".tmp-*")), "a partial chunk was left"
    assert not list(store_path.glob(".tmp-*")), "a spool was left"
    assert ingest(*args[1:], "--store", store_path).exit_code == 0
    assert ingest(*args[1:], "--store", reference).exit_code == 0
    assert store_content(store_path) == store_content(reference)


def test_symlinked_folders_are_followed_once_and_unreadable_ones_are_reported(
    library, tmp_path, monkeypatch
):
    from coincide.stages.ingest import find_media

    root = tmp_path / "root"
    (root / "own").mkdir(parents=True)
    shutil.copy(library / "tone.wav", root / "own" / "a.wav")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(library / "sub dir" / "LOUD.FLAC", elsewhere / "b.flac")
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / "own" / "loop").symlink_to(root, target_is_directory=True)  # must not recurse forever
    (root / "locked").mkdir()
    shutil.copy(library / "tone.wav", root / "locked" / "c.wav")
    real_scandir = os.scandir

    def scandir(path="."):  # root reads every folder: pretend this one is not ours
        if Path(path) == root / "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    skipped: list[tuple[str, str]] = []
    found = find_media([root], on_skip=lambda folder, why: skipped.append((folder, why)))
    assert found == sorted([(root / "own" / "a.wav").resolve(), (elsewhere / "b.flac").resolve()])
    assert skipped == [(str(root / "locked"), "folder cannot be read: Permission denied")]
    result = ingest(root, "--store", tmp_path / "store")
    assert result.exit_code == 0, result.output
    assert f"skipped {root / 'locked'}: folder cannot be read" in result.output
    report = json.loads((tmp_path / "store" / "ingest_report.json").read_text())
    assert [entry["path"] for entry in report["skipped"]] == [str(root / "locked")]


def test_a_store_folder_without_permission_is_one_sentence(tmp_path, monkeypatch, capsys):
    # Root may write anywhere, so the refusal the file system gives other users is simulated.
    import coincide.store.writer as writer

    def denied(root: Path) -> None:
        raise PermissionError(13, "Permission denied", str(root))

    monkeypatch.setattr(writer, "_prepare_root", denied)
    mediagen.write_audio(tmp_path / "a.wav", "wav", seconds=2)
    store = tmp_path / "theirs" / "store"
    monkeypatch.setattr(
        sys, "argv", ["coincide", "ingest", str(tmp_path / "a.wav"), "--store", str(store)]
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err == (
        f"error: permission denied on {store}; choose a folder you can write to, or fix its "
        "permissions."
    )
