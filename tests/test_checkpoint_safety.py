"""Checkpoints that must not be trusted: planted pickles and flipped bits.

A planted pickle never runs: every checkpoint loads with weights_only=True. Each checkpoint path
of a run (the curriculum's last.pt and best.pt, a fine-tuning's checkpoint.pt) is replaced by a
pickle that creates a marker file when it is unpickled; every command that reads that path must
refuse it with one sentence and leave no marker.

A flipped bit is caught: torch.load reads a checkpoint whose tensor bytes changed without a
word, so each checkpoint carries a checksum of its contents, checked on load; training resumes
from the checkpoint before a damaged last.pt.
"""

from __future__ import annotations

import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from coincide.classifier.train import (
    FinetuneConfig,
    TrainingSet,
    load_classifier,
    train_classifier,
)
from coincide.cli.commands import app
from coincide.config.settings import load_config
from coincide.errors import UserError
from coincide.models.encoders import EncoderConfig, build_encoder
from coincide.stages.train import train
from coincide.store.features import open_store
from coincide.train.checkpoint import load_checkpoint
from inference_helpers import TinyRun, make_tiny_run
from test_train import TINY, make_store

torch.set_num_threads(1)


class _Trap:
    """Unpickling this calls open(marker, "w"): proof that the loader ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": _Trap(marker), "format": "coincide-checkpoint"}, path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return make_tiny_run(tmp_path_factory.mktemp("safety"))


@pytest.fixture
def trapped(tiny: TinyRun, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the tiny run; returns (run, marker)."""
    run = tmp_path / "run"
    shutil.copytree(tiny.run, run)
    return run, tmp_path / "pwned"


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})


def assert_refused(result, marker: Path, path: Path) -> None:
    assert not marker.exists(), "the planted pickle ran"
    # The console script prints a UserError as its one sentence (cli.main); CliRunner keeps it.
    assert isinstance(result.exception, UserError), result.exception
    message = str(result.exception)
    assert str(path) in message and "\n" not in message


def test_the_trap_works_when_loaded_unsafely(tmp_path: Path) -> None:
    # Guards the test itself: the same file does run code under weights_only=False.
    marker = tmp_path / "pwned"
    plant(tmp_path / "x.pt", marker)
    torch.load(tmp_path / "x.pt", weights_only=False)
    assert marker.exists()


def test_finetune_checkpoint_is_refused_by_the_api(trapped: tuple[Path, Path]) -> None:
    run, marker = trapped
    path = run / "finetune" / "all" / "checkpoint.pt"
    plant(path, marker)
    with pytest.raises(UserError, match="checkpoint.pt"):
        load_classifier(path)
    assert not marker.exists()


def test_finetune_resume_refuses_a_planted_checkpoint(
    tiny: TinyRun, trapped: tuple[Path, Path], tmp_path: Path
) -> None:
    run, marker = trapped
    out = tmp_path / "ft"
    plant(out / "checkpoint.pt", marker)
    store = open_store(tiny.store)
    labeled = TrainingSet.from_window_labels([list(x) for x in store.index["labels"]])
    encoder = build_encoder(EncoderConfig(arch="tiny"))
    cfg = FinetuneConfig(steps=2, batch_size=4, checkpoint_every=2, progress=False)
    with pytest.raises(UserError, match="checkpoint.pt"):
        train_classifier(encoder, store, labeled, out, cfg, {"s": 1}, torch.device("cpu"))
    assert not marker.exists()


@pytest.mark.parametrize("command", ["predict", "embed", "export"])
def test_commands_refuse_a_planted_finetune_checkpoint(
    tiny: TinyRun, trapped: tuple[Path, Path], tmp_path: Path, command: str
) -> None:
    run, marker = trapped
    path = run / "finetune" / "all" / "checkpoint.pt"
    plant(path, marker)
    args = {
        "predict": ["predict", run, tiny.media, "--csv", tmp_path / "p.csv", "--device", "cpu"],
        "embed": ["embed", run, tiny.media, "--parquet", tmp_path / "e.parquet", "--device", "cpu"],
        "export": ["export", run, "--out", tmp_path / "exported"],
    }[command]
    assert_refused(invoke(*args), marker, path)


@pytest.mark.parametrize("name", ["last.pt", "best.pt"])
@pytest.mark.parametrize("command", ["evaluate", "cluster", "embed"])
def test_commands_refuse_a_planted_curriculum_checkpoint(
    tiny: TinyRun, trapped: tuple[Path, Path], tmp_path: Path, command: str, name: str
) -> None:
    run, marker = trapped
    shutil.rmtree(run / "finetune")
    path = run / "checkpoints" / name
    plant(path, marker)  # best.pt is read when it exists, last.pt otherwise
    args = {
        "evaluate": ["evaluate", run, "--test-store", tiny.store],
        "cluster": ["cluster", run, "--store", tiny.store],
        "embed": ["embed", run, tiny.media, "--parquet", tmp_path / "e.parquet", "--device", "cpu"],
    }[command]
    assert_refused(invoke(*args), marker, path)


def flip_a_tensor_bit(path: Path) -> None:
    """Flip one bit in the middle of the largest tensor stored in a torch checkpoint (a zip of
    uncompressed members), leaving the archive itself intact."""
    with zipfile.ZipFile(path) as archive:
        members = [i for i in archive.infolist() if "/data/" in i.filename]
        info = max(members, key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    header = info.header_offset
    name_len, extra_len = struct.unpack("<HH", raw[header + 26 : header + 30])
    raw[header + 30 + name_len + extra_len + info.file_size // 2] ^= 0x10
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("kind", ["best.pt", "finetune"])
def test_a_bit_flipped_checkpoint_is_refused(trapped: tuple[Path, Path], tiny: TinyRun, kind):
    run, _marker = trapped
    path = run / "checkpoints" / "best.pt"
    if kind == "finetune":
        path = run / "finetune" / "all" / "checkpoint.pt"
    else:
        shutil.rmtree(run / "finetune")
        shutil.copy(run / "checkpoints" / "last.pt", path)
    flip_a_tensor_bit(path)
    torch.load(path, weights_only=True)  # torch itself does not notice
    result = invoke("embed", run, tiny.media, "--parquet", run / "e.parquet", "--device", "cpu")
    assert isinstance(result.exception, UserError), result.exception
    assert f"checkpoint {path} is damaged" in str(result.exception)


def test_training_resumes_from_the_checkpoint_before_a_damaged_last_pt(tmp_path, capsys):
    store = make_store(tmp_path / "store")
    cfg = load_config(["small"], [*TINY, "log.checkpoint_every=1"])
    run = tmp_path / "run"
    train(cfg, store, run)
    last = run / "checkpoints" / "last.pt"
    assert load_checkpoint(run / "checkpoints" / "last.prev.pt")["step"] == 11
    flip_a_tensor_bit(last)
    with pytest.raises(UserError, match="is damaged"):
        load_checkpoint(last)
    capsys.readouterr()
    train(cfg, store, run)
    out, err = capsys.readouterr()
    assert f"warning: checkpoint {last} is damaged" in err
    assert f"resuming from {run / 'checkpoints' / 'last.prev.pt'}: step 11" in out
    assert load_checkpoint(last)["step"] == 12  # written again, intact
