"""`coincide train --init-from SOURCE`: start the audio encoder f from weights a user brings,
then adapt it by coincidence.

SOURCE is one of
- a plain state dict of f: a file written by `torch.save(encoder.state_dict(), path)` (read with
  `weights_only=True`, so the file cannot run code) or a safetensors file. Its keys are those of
  f's `state_dict()` (`coincide.models.encoders.Encoder` built from `model.audio`), or all of
  them under one prefix `module.` (a DDP-wrapped module), `audio.` (a run's ModuleDict) or
  `encoder.` (an export);
- a coincide run folder, training or fine-tuning checkpoint, or `coincide export` folder: its f,
  as `coincide.load_model` reads it.

Every tensor of f must come from SOURCE with f's shape, its BatchNorm statistics included (they
carry the log-mel level the weights expect); the first key that is missing, extra or of another
shape is named in one sentence with both shapes.

The run records where f started in RUN/init_from.json (the resolved SOURCE, what its weights
were, how many tensors): a run that resumes from its checkpoint keeps its trained weights and
does not load SOURCE again; resuming with another SOURCE, or adding --init-from to a run that
already trained without it, is refused (a new --run folder starts from it); a run stopped before
its first checkpoint starts again from the recorded SOURCE.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from coincide.errors import UserError, short_reason
from coincide.files import write_json_atomic
from coincide.run_folder import INIT_FILE
from coincide.store.layout import read_json_or_none

# Prefixes under which other tools (and coincide's own files) keep f's keys.
_PREFIXES = ("module.", "audio.", "encoder.")


def _shape(tensor: torch.Tensor) -> str:
    return str(tuple(tensor.shape))


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_coincide_checkpoint(payload: Any) -> bool:
    from coincide.train.checkpoint import checkpoint_kind

    return isinstance(payload, dict) and checkpoint_kind(payload) is not None


def read_encoder_state(source: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """f's tensors in SOURCE (see the module docstring) and what they were read from."""
    from coincide.models.inference import load_model

    if not source.exists():
        raise UserError(
            f"--init-from {source} does not exist; give a state dict file of the audio encoder "
            "or a coincide run / export folder."
        )
    if source.is_dir():
        model = load_model(source, device="cpu")
        return model.encoder.state_dict(), model.identity
    identity = {"file": str(source.resolve()), "sha256": _file_digest(source)}
    try:
        if source.suffix == ".safetensors":
            from safetensors.torch import load_file

            payload: Any = load_file(str(source))
        else:
            payload = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # torch and safetensors raise many types for a foreign file
        raise UserError(
            f"cannot read --init-from {source} ({short_reason(err)}); save the encoder with "
            "torch.save(encoder.state_dict(), path)."
        ) from err
    if _is_coincide_checkpoint(payload):
        return load_model(source, device="cpu").encoder.state_dict(), identity
    if not isinstance(payload, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items()
    ):
        shown = list(payload)[:3] if isinstance(payload, dict) else type(payload).__name__
        raise UserError(
            f"--init-from {source} is not a state dict (name -> tensor; it holds {shown}); save "
            "the encoder itself with torch.save(encoder.state_dict(), path)."
        )
    for prefix in _PREFIXES:
        if payload and all(k.startswith(prefix) for k in payload):
            payload = {k[len(prefix) :]: v for k, v in payload.items()}
            break
    return payload, identity


def check_fits(state: dict[str, torch.Tensor], encoder: nn.Module, source: Path) -> None:
    """UserError naming the first tensor of f that SOURCE lacks, has extra or shapes otherwise."""
    config = getattr(encoder, "config", None)
    what = (
        f"model.audio.arch={config.arch}, embed_dim {config.embed_dim}" if config else "model.audio"
    )
    fix = f"give weights of that architecture or set model.audio.* to the one of {source.name}"
    wanted = encoder.state_dict()
    for key, tensor in wanted.items():
        if key not in state:
            raise UserError(
                f"--init-from {source} does not fit the audio encoder f ({what}): it has no "
                f"tensor '{key}' (f's is {_shape(tensor)}); {fix}."
            )
        if state[key].shape != tensor.shape:
            raise UserError(
                f"--init-from {source} does not fit the audio encoder f ({what}): its tensor "
                f"'{key}' is {_shape(state[key])} where f's is {_shape(tensor)}; {fix}."
            )
    extra = next((k for k in state if k not in wanted), None)
    if extra is not None:
        raise UserError(
            f"--init-from {source} does not fit the audio encoder f ({what}): its tensor "
            f"'{extra}' {_shape(state[extra])} has no place in f; {fix}."
        )


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """RUN/init_from.json, or None for a run that started f from fresh weights."""
    return read_json_or_none(run_dir / INIT_FILE, "start again in a new --run folder")


def _write_record(run_dir: Path, record: dict[str, Any]) -> None:
    write_json_atomic(run_dir / INIT_FILE, record)


def start_audio_from(
    run_dir: Path,
    requested: Path | None,
    encoder: nn.Module,
    resuming: bool,
    write: bool = True,
) -> str | None:
    """Apply --init-from at the start of `coincide train`; returns the line to print (None when
    f starts from fresh weights).

    Args:
        run_dir: the run folder (its record RUN/init_from.json is read and, with `write`,
            written: rank 0 only under torchrun).
        requested: the --init-from SOURCE, or None.
        encoder: f, loaded in place.
        resuming: whether the run resumes from its own checkpoint (its weights win).
    """
    record = read_record(run_dir)
    if resuming:
        if requested is None:
            return None if record is None else f"f started from {record['source']}"
        if record is None:
            raise UserError(
                f"{run_dir} already holds weights trained from a fresh f, and resumes from them; "
                f"leave out --init-from, or give a new --run folder to start from {requested}."
            )
        if str(requested.resolve()) != record["source"]:
            raise UserError(
                f"{run_dir} started f from {record['source']} and resumes from its checkpoint; "
                f"leave out --init-from, or give a new --run folder to start from {requested}."
            )
        return f"f started from {record['source']}; resuming from the run's checkpoint"
    if requested is None and record is None:
        return None
    source = requested if requested is not None else Path(record["source"])  # type: ignore[index]
    state, identity = read_encoder_state(source)
    check_fits(state, encoder, source)
    encoder.load_state_dict(state)
    if write:
        _write_record(
            run_dir, {"source": str(source.resolve()), "weights": identity, "tensors": len(state)}
        )
    return f"f starts from {source} ({len(state)} tensors) and adapts by coincidence"
