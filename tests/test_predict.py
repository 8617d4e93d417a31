"""`coincide predict`, `coincide embed` and the `load_model` API on a tiny trained run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from coincide.cli.commands import app
from coincide.errors import UserError
from coincide.media.decode import decode_audio
from coincide.models.inference import LabelRule, load_model
from coincide.stages.predict import PredictSettings
from coincide.stages.predict import run as run_predict
from coincide.store.features import open_store
from inference_helpers import TinyRun, make_tiny_run, quiet, write_noise_wav

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return make_tiny_run(tmp_path_factory.mktemp("predict"))


@pytest.fixture(scope="module")
def model(tiny: TinyRun):
    return load_model(tiny.run, device="cpu")


def invoke(*args: str):
    # A wide terminal, so that rich does not wrap long paths in tables.
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_run_folder_loads_the_finetuned_classifier(tiny: TinyRun, model) -> None:
    assert model.classes == ["fire", "noise", "speech", "tone"]
    assert not model.multilabel
    assert model.source == tiny.run / "finetune" / "all" / "checkpoint.pt"
    assert model.home == tiny.run.resolve()


def test_predict_csv_matches_the_api_and_the_store(tiny: TinyRun, model, tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    result = invoke("predict", tiny.run, tiny.media, "--csv", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    # --format csv prints the same document on stdout (notes and progress go to stderr).
    printed = invoke("predict", tiny.run, tiny.media, "--format", "csv", "--device", "cpu")
    assert printed.stdout == out.read_text(encoding="utf-8").replace("\r\n", "\n")
    assert list(table.columns) == ["media_path", "scope", "time_s", "duration_s", "labels"] + (
        model.classes
    )
    store = open_store(tiny.store)
    assert set(table["media_path"]) == set(store.media["media_path"])
    for name in tiny.labels:
        path = str((tiny.media / name).resolve())
        rows = table[table["media_path"] == path]
        seconds = rows[rows["scope"] == "second"]
        clip = rows[rows["scope"] == "clip"]
        scores = seconds[model.classes].to_numpy()
        # Same windows as ingestion made for the store, scored by the same network.
        media_id = store.media.loc[store.media["media_path"] == path, "media_id"].iat[0]
        from_store = model.score_logmel(store.logmel[store.windows_of(media_id)])
        np.testing.assert_allclose(scores, from_store, atol=1e-5)
        window_scores, clip_scores, classes = model.predict(decode_audio(Path(path)), 16000)
        np.testing.assert_allclose(scores, window_scores, atol=1e-5)
        np.testing.assert_allclose(seconds["time_s"], np.arange(len(seconds)))
        assert len(clip) == 1
        np.testing.assert_allclose(clip[model.classes].to_numpy()[0], clip_scores, atol=1e-5)
        np.testing.assert_allclose(clip_scores, scores.mean(axis=0), atol=1e-5)
        # Softmax classifier, no flag: the single best class labels each row.
        best = [classes[i] for i in window_scores.argmax(axis=1)]
        assert list(seconds["labels"]) == best


def test_predict_json_threshold_and_skipped_files(tiny: TinyRun, model, tmp_path: Path) -> None:
    media = tmp_path / "media"
    shutil.copytree(tiny.media, media)
    (media / "broken.wav").write_text("not audio", encoding="utf-8")
    (media / "empty.mp3").write_bytes(b"")
    out = tmp_path / "scores.json"
    result = invoke("predict", tiny.run, media, "--json", out, "--threshold", "0.26")
    assert result.exit_code == 0
    skipped_lines = [line for line in result.output.splitlines() if line.startswith("skipped ")]
    assert len(skipped_lines) == 2
    assert any("broken.wav" in line for line in skipped_lines)
    document = json.loads(out.read_text(encoding="utf-8"))
    assert document["classes"] == model.classes
    assert document["settings"]["settings"]["threshold"] == 0.26
    assert {Path(s["media_path"]).name for s in document["skipped"]} == {
        "broken.wav",
        "empty.mp3",
    }
    assert len(document["media"]) == len(tiny.labels)
    for entry in document["media"]:
        scores = np.array([second["scores"] for second in entry["seconds"]])
        for second, row in zip(entry["seconds"], scores, strict=True):
            chosen = {model.classes[c] for c in np.flatnonzero(row >= 0.26)}
            assert set(second["labels"]) == chosen
        np.testing.assert_allclose(entry["clip"]["scores"], scores.mean(axis=0), atol=1e-6)


def test_predict_without_out_prints_clip_labels(tiny: TinyRun, model) -> None:
    path = tiny.media / "4-164661-A-12.flac"
    result = invoke("predict", tiny.run, path, "--top", "2")
    assert result.exit_code == 0
    _, clip_scores, classes = model.predict(decode_audio(path))
    best, second = np.argsort(-clip_scores)[:2]
    line = next(line for line in result.output.splitlines() if "4-164661-A-12.flac" in line)
    assert f"{classes[best]} ({clip_scores[best]:.3f}), {classes[second]}" in line
    assert "1 files: 1 predicted (5 seconds), 0 skipped" in result.output


def test_label_rules() -> None:
    scores = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    classes = ["a", "b", "c"]
    assert LabelRule(top=2).labels(scores, classes) == [["b", "c"], ["a", "c"]]
    assert LabelRule(threshold=0.3).labels(scores, classes) == [["b", "c"], ["a", "c"]]
    assert LabelRule(threshold=0.55).labels(scores, classes) == [["b"], []]


def test_flags_and_inputs_that_cannot_work(tiny: TinyRun, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="only one"):
        run_predict(PredictSettings(tiny.run, (tiny.media,), threshold=0.5, top=1), console=quiet())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.wav").write_text("nope", encoding="utf-8")
    with pytest.raises(UserError, match="none of the 1 media files"):
        run_predict(PredictSettings(tiny.run, (bad,), csv_out=tmp_path / "x.csv"), console=quiet())
    assert not (tmp_path / "x.csv").exists()
    # A run without a fine-tuned classifier embeds but cannot predict.
    encoder_only = load_model(tiny.run / "checkpoints" / "last.pt", device="cpu")
    assert encoder_only.classifier is None
    waveform = decode_audio(tiny.media / "noise0.wav")
    assert encoder_only.embed(waveform, 16000).shape == (3, 128)
    with pytest.raises(UserError, match="coincide finetune"):
        encoder_only.predict(waveform, 16000)
    with pytest.raises(UserError, match="coincide finetune"):
        run_predict(
            PredictSettings(tiny.run / "checkpoints" / "last.pt", (tiny.media,)), console=quiet()
        )


def test_api_resamples_and_scales_integer_audio(tiny: TinyRun, model) -> None:
    path = tiny.media / "7_theo_36.wav"  # FSDD: 8 kHz 16-bit
    native, rate = librosa.load(path, sr=None, mono=True)
    assert rate == 8000
    resampled = model.predict(native, rate).window_scores
    decoded = model.predict(decode_audio(path), 16000).window_scores
    np.testing.assert_allclose(resampled, decoded, atol=1e-4)
    pcm = np.round(native * 32768).clip(-32768, 32767).astype(np.int16)
    np.testing.assert_allclose(model.embed(pcm, rate), model.embed(native, rate), atol=1e-4)
    stereo = np.stack([native, native])
    np.testing.assert_allclose(model.embed(stereo, rate), model.embed(native, rate), atol=1e-6)


def test_both_channel_layouts_are_read_and_an_ambiguous_one_is_refused(model) -> None:
    rng = np.random.default_rng(3)
    left, right = rng.normal(0, 0.1, (2, 16000 * 3)).astype(np.float32)
    mono = model.embed((left + right) / 2, 16000)
    assert mono.shape == (3, 128)
    first = np.stack([left, right])  # (channels, samples): librosa, torchaudio
    last = first.T.copy()  # (samples, channels): soundfile, scipy.io.wavfile
    np.testing.assert_allclose(model.embed(first, 16000), mono, atol=1e-6)
    np.testing.assert_allclose(model.embed(last, 16000), mono, atol=1e-6)
    scores = model.predict(last, 16000, channels_first=False).window_scores
    np.testing.assert_allclose(scores, model.predict(first, 16000).window_scores, atol=1e-6)
    # An explicit layout is taken at its word: 48000 "channels" of 2 samples are one window.
    assert len(model.embed(last, 16000, channels_first=True)) == 1
    # Twelve microphones: no axis is short enough to be channels by the rule, so ask.
    array = rng.normal(0, 0.1, (12, 16000 * 2)).astype(np.float32)
    with pytest.raises(UserError, match="channels_first=True for \\(channels, samples\\)"):
        model.embed(array, 16000)
    np.testing.assert_allclose(
        model.embed(array, 16000, channels_first=True),
        model.embed(array.mean(axis=0), 16000),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        model.embed(array.T, 16000, channels_first=False),
        model.embed(array.mean(axis=0), 16000),
        atol=1e-6,
    )


def test_long_waveforms_are_cut_into_blocks_without_changing_windows(model) -> None:
    rng = np.random.default_rng(0)
    waveform = rng.normal(0, 0.1, 16000 * 300 + 9000).astype(np.float32)  # 300 windows
    from coincide.media.frontend import logmel_windows

    whole = model.embed_logmel(logmel_windows(waveform))
    blocked = model.embed(waveform, 16000)
    assert blocked.shape == (300, 128)
    np.testing.assert_allclose(blocked, whole, atol=1e-5)


def test_newest_finished_finetuning_is_the_default(tiny: TinyRun, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny.run, run)
    later = run / "finetune" / "later"
    later.mkdir()
    shutil.copy(run / "finetune" / "all" / "checkpoint.pt", later / "checkpoint.pt")
    # Not finished (no finetune.json): the older finished one is used.
    assert load_model(run, "cpu").source == run / "finetune" / "all" / "checkpoint.pt"
    shutil.copy(run / "finetune" / "all" / "finetune.json", later / "finetune.json")
    os.utime(later / "checkpoint.pt", ns=(2**62, 2**62))
    assert load_model(run, "cpu").source == later / "checkpoint.pt"
    assert load_model(later, "cpu").source == later / "checkpoint.pt"
    with pytest.raises(UserError, match="holds no model"):
        load_model(tmp_path, "cpu")


def test_embed_writes_one_row_per_window(tiny: TinyRun, model, tmp_path: Path) -> None:
    out = tmp_path / "embeddings.parquet"
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 100)
    result = invoke("embed", tiny.run, tiny.media, broken, "--parquet", out, "--device", "cpu")
    assert result.exit_code == 0
    assert "skipped" in result.output and "broken.mp4" in result.output
    table = pq.read_table(out)
    assert str(table.schema.field("embedding").type) == "fixed_size_list<element: float>[128]"
    record = json.loads(table.schema.metadata[b"coincide_settings"])
    assert record["command"] == "embed" and record["settings"]["device"] == "cpu"
    store = open_store(tiny.store)
    assert table.num_rows == len(store)
    frame = table.to_pandas()
    for name in tiny.labels:
        path = str((tiny.media / name).resolve())
        rows = frame[frame["media_path"] == path]
        embeddings = np.stack(rows["embedding"].to_numpy())
        np.testing.assert_allclose(rows["time_s"], np.arange(len(rows)))
        np.testing.assert_allclose(embeddings, model.embed(decode_audio(Path(path))), atol=1e-5)


def write_hour_of_audio(path: Path, rate: int = 8000) -> Path:
    """One hour of 16-bit mono WAV (noise over a tone that changes every second), by minutes."""
    rng = np.random.default_rng(0)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        for minute in range(60):
            t = np.arange(60 * rate) / rate
            tone = 0.3 * np.sin(2 * np.pi * (300 + 100 * (minute % 7)) * t)
            samples = tone + rng.normal(0, 0.05, len(t))
            out.writeframes(np.round(samples * 32767).astype("<i2").tobytes())
    return path


# The child predicts a 10-second file, then the hour, reading its peak RSS after each; the peak
# is monotonic, so the growth between the two readings is the memory the hour needed beyond a
# short file. Linux's VmHWM belongs to the child's own address space; ru_maxrss would not do:
# it survives exec, so a child forked from a large pytest process starts at the parent's size.
CHILD = """
import resource, sys, torch
from pathlib import Path
torch.set_num_threads(1)
from coincide.stages.predict import PredictSettings, run
from inference_helpers import quiet

def peak_kib():
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

run_dir, short, hour, out = map(Path, sys.argv[1:5])
run(PredictSettings(run_dir, (short,), csv_out=out), console=quiet())
before = peak_kib()
run(PredictSettings(run_dir, (hour,), csv_out=out), console=quiet())
after = peak_kib()
print(before, after)
"""


def test_an_hour_long_file_streams_in_bounded_memory(tiny: TinyRun, tmp_path: Path) -> None:
    hour = write_hour_of_audio(tmp_path / "hour.wav")
    short = write_noise_wav(tmp_path / "short.wav", 10.0, seed=3)
    out = tmp_path / "hour.csv"
    command = [sys.executable, "-c", CHILD, str(tiny.run), str(short), str(hour), str(out)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert completed.returncode == 0, completed.stderr
    # The last line: predict itself prints its table to stdout before it.
    before_kib, after_kib = map(int, completed.stdout.strip().splitlines()[-1].split())
    peak = after_kib * 1024  # the child's own peak, imports included
    growth = (after_kib - before_kib) * 1024
    print(
        f"1 hour of audio: peak RSS {peak / 2**20:.0f} MiB, {growth / 2**20:.0f} MiB more than 10 s"
    )
    # Decoding the hour at once would hold 230 MB of samples and a 580 MB complex STFT.
    assert growth < 128 * 2**20
    # Most of the peak is the imports (torch with CUDA libraries, torchvision, librosa/numba:
    # about 0.9 GB), the same for any file length; the bound leaves room for other builds.
    assert peak < 1.5 * 2**30
    table = pd.read_csv(out)
    assert (table["scope"] == "second").sum() == 3600
    clip = table[table["scope"] == "clip"]
    assert float(clip["duration_s"].iat[0]) == pytest.approx(3600.0, abs=0.01)
