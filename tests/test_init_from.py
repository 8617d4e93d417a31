"""`coincide train --init-from`: f starts from a user's weights, recorded so resuming keeps its own.

The end-to-end runs use a learning rate of 1e-30: Adam then moves no float32 weight, so the run's
checkpoint must hold the user's parameters bit for bit.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import eval_helpers
from coincide.cli.commands import app
from coincide.errors import UserError
from coincide.models.encoders import EncoderConfig, build_encoder
from coincide.models.inference import load_model
from coincide.run_folder import INIT_FILE
from coincide.train.checkpoint import load_models
from coincide.train.init_from import read_encoder_state, start_audio_from

torch.set_num_threads(1)
FROZEN = [*eval_helpers.TINY, "optim.lr=1e-30", "curriculum.stages=[av]"]


def _encoder(arch: str = "tiny", seed: int = 7, embed_dim: int = 8) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_encoder(EncoderConfig(arch=arch, embed_dim=embed_dim))


def _parameters(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _train(store: Path, run: Path, *extra: str) -> tuple[int, str]:
    args = ["train", str(store), "--run", str(run), "--config", "small"]
    for override in FROZEN:
        args += ["--set", override]
    result = CliRunner().invoke(app, args + list(extra))
    return result.exit_code, result.output + str(result.exception or "")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("init_from")
    return eval_helpers.make_store(root / "store", ["a", "b"], clips_per_class=4)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    encoder = _encoder()
    path = tmp_path_factory.mktemp("weights") / "f.pt"
    torch.save(encoder.state_dict(), path)
    return path, encoder


def test_f_starts_from_the_state_dict_and_resuming_keeps_the_run_s_own(store, weights, tmp_path):
    path, source = weights
    run = tmp_path / "run"
    code, output = _train(store, run, "--init-from", str(path))
    assert code == 0, output
    assert f"f starts from {path}" in output
    trained = load_models(run / "checkpoints" / "last.pt")["audio"]
    for name, value in _parameters(source).items():
        assert torch.equal(dict(trained.named_parameters())[name], value), name
    record = json.loads((run / INIT_FILE).read_text(encoding="utf-8"))
    assert record["source"] == str(path.resolve())
    assert record["weights"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["tensors"] == len(source.state_dict())

    # Again with the same source: the run resumes (finished), nothing is loaded over it.
    before = (run / "checkpoints" / "last.pt").read_bytes()
    code, output = _train(store, run, "--init-from", str(path))
    assert code == 0, output
    assert "resuming from the run's checkpoint" in output
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
    # Another source, or none recorded, cannot be applied to trained weights.
    other = tmp_path / "other.pt"
    torch.save(_encoder(seed=8).state_dict(), other)
    code, output = _train(store, run, "--init-from", str(other))
    assert code == 1 and f"started f from {path.resolve()}" in output
    fresh = tmp_path / "fresh"
    assert _train(store, fresh)[0] == 0
    code, output = _train(store, fresh, "--init-from", str(path))
    assert code == 1 and "weights trained from a fresh f" in output

    # A coincide run folder is a source too: its f (best.pt) starts the new run.
    second = tmp_path / "second"
    code, output = _train(store, second, "--init-from", str(run))
    assert code == 0, output
    started = load_model(run, device="cpu").encoder
    again = load_models(second / "checkpoints" / "last.pt")["audio"]
    for name, value in _parameters(started).items():
        assert torch.equal(dict(again.named_parameters())[name], value), name


def test_a_run_stopped_before_its_first_checkpoint_starts_again_from_the_record(weights, tmp_path):
    path, source = weights
    run = tmp_path / "run"
    first = _encoder(seed=1)
    assert start_audio_from(run, path, first, resuming=False) is not None
    # No checkpoint yet, no flag: the recorded source is loaded again, not fresh weights kept.
    again = _encoder(seed=2)
    note = start_audio_from(run, None, again, resuming=False)
    assert note == f"f starts from {path.resolve()} ({len(source.state_dict())} tensors) " + (
        "and adapts by coincidence"
    )
    for name, value in source.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name
    # Resuming from a checkpoint leaves the encoder as the checkpoint will set it.
    untouched = _encoder(seed=3)
    expected = _parameters(untouched)
    assert start_audio_from(run, None, untouched, resuming=True) == (
        f"f started from {path.resolve()}"
    )
    assert all(torch.equal(v, expected[k]) for k, v in untouched.named_parameters())


def test_prefixed_keys_and_safetensors_are_read(weights, tmp_path):
    _, source = weights
    wrapped = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, wrapped)
    flat = tmp_path / "f.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(flat))
    for path in (wrapped, flat):
        state, identity = read_encoder_state(path)
        assert set(state) == set(source.state_dict())
        assert identity["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_weights_that_do_not_fit_are_named_in_one_sentence(weights, tmp_path):
    path, source = weights
    run = tmp_path / "run"
    wider = tmp_path / "wider.pt"
    torch.save(_encoder(embed_dim=16).state_dict(), wider)
    key = next(k for k, v in source.state_dict().items() if v.shape != _shape_of(wider, k))
    want, got = tuple(source.state_dict()[key].shape), _shape_of(wider, key)
    with pytest.raises(UserError, match="does not fit") as caught:
        start_audio_from(run, wider, _encoder(), resuming=False)
    assert f"its tensor '{key}' is {got} where f's is {want}" in str(caught.value)
    assert "model.audio.arch=tiny, embed_dim 8" in str(caught.value)

    state = source.state_dict()
    missing_key = next(iter(state))
    missing = tmp_path / "missing.pt"
    torch.save({k: v for k, v in state.items() if k != missing_key}, missing)
    extra = tmp_path / "extra.pt"
    torch.save({**state, "head.weight": torch.zeros(3, 2)}, extra)
    nested = tmp_path / "nested.pt"
    torch.save({"state_dict": state, "epoch": 3}, nested)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    cases = [
        (missing, f"it has no tensor '{missing_key}' \\(f's is"),
        (extra, r"its tensor 'head.weight' \(3, 2\) has no place in f"),
        (nested, r"is not a state dict .*\['state_dict', 'epoch'\]"),
        (garbage, "cannot read --init-from"),
        (tmp_path / "nowhere.pt", "does not exist"),
    ]
    for bad, message in cases:
        with pytest.raises(UserError, match=message):
            start_audio_from(run, bad, _encoder(), resuming=False)
    assert not (run / INIT_FILE).exists()  # nothing recorded for weights that were refused


def _shape_of(path: Path, key: str) -> tuple[int, ...]:
    return tuple(torch.load(path, weights_only=True)[key].shape)
