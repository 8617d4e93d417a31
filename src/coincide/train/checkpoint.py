"""Models of a run and their checkpoints: one file format for training and fine-tuning.

Every checkpoint coincide writes is a dict saved by `save_checkpoint` (torch.save, atomic, with
a checksum) and read by `read_checkpoint_file` (torch.load with `weights_only=True`, so a
planted pickle cannot run code; the checksum checked), tagged by its `format`:
`coincide-train-checkpoint` (below) or `coincide-finetune-checkpoint` (`coincide finetune`: the
classifier f + p_class with its optimizer, FINETUNE_KEYS; one written before the tag existed has
the keys and no tag, and reads the same).

A training checkpoint is one dict:

    format, version        "coincide-train-checkpoint", 1
    config                 the resolved Config as plain data (the model config is inside it)
    parts                  names of the model parts it holds (see MODEL_PARTS)
    models                 {part: state_dict}
    optimizer              the optimizer's state_dict
    step, stage_index, stage, stage_step, stage_finished
                           where training is: global optimizer steps, the stage being trained
                           (or just finished) and the steps taken in it
    sampler                SamplerState of the stage's batch stream ({seed, stream, next_batch})
    plateau                the plateau rule's state
    rng                    torch CPU (and CUDA) generator states
    finished               [{name, steps, stopped, best_val}] of the finished stages
    checksum               BLAKE2b of everything above (`payload_checksum`), checked on load

Writes are atomic (temp file in the same folder, fsync, os.replace): a run killed at any moment
leaves the previous checkpoint or the new one, never half of one. A checkpoint whose contents no
longer match its checksum (a flipped bit) is refused; training keeps the last.pt it replaces as
last.prev.pt and resumes from that when last.pt is damaged. bf16 autocast needs no loss
scaler, so there is none to save.

A run folder keeps two of them in RUN/checkpoints/: `last.pt`, where training is (resuming reads
it), and `best.pt`, the models at the best held-out measurement of the newest stage that has
been measured (its stage's criterion: the held-out coincidence loss), described by `best.json`
({stage, stage_index, step, stage_step, value}). Every command that *uses* a run's models reads
best.pt by default (`run_checkpoint`), because the last weights of a stage that overfits are
worse on unseen media than its best ones.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from coincide.config.settings import Config, config_from_dict
from coincide.errors import UserError, short_reason
from coincide.files import write_json_atomic
from coincide.models.encoders import build_encoder
from coincide.models.heads import ClusterHead, build_coincidence_head
from coincide.run_folder import BEST_CHECKPOINT, BEST_INFO, CHECKPOINTS_DIR, LAST_CHECKPOINT
from coincide.store.layout import read_json_or_none

CHECKPOINT_FORMAT = "coincide-train-checkpoint"
CHECKPOINT_VERSION = 1
FINETUNE_FORMAT = "coincide-finetune-checkpoint"
FINETUNE_VERSION = 1
CHECKSUM_KEY = "checksum"
# f, g, p_AA, p_AV, p_clust: the names of the parts in a run's ModuleDict.
MODEL_PARTS = ("audio", "image", "aa_head", "av_head", "cluster_head")


def build_models(cfg: Config, parts: Iterable[str]) -> nn.ModuleDict:
    """Freshly initialised model parts (a subset of MODEL_PARTS), in MODEL_PARTS order."""
    wanted = set(parts)
    unknown = wanted - set(MODEL_PARTS)
    if unknown:
        raise ValueError(f"unknown model parts {sorted(unknown)}; known: {MODEL_PARTS}")
    d = cfg.model.embed_dim
    head = cfg.model.coincidence_head
    hidden, dropout = cfg.model.coincidence_hidden, cfg.model.head_dropout
    builders = {
        "audio": lambda: build_encoder(cfg.model.audio),
        "image": lambda: build_encoder(cfg.model.image),
        "aa_head": lambda: build_coincidence_head(head, d, hidden, dropout),
        "av_head": lambda: build_coincidence_head(head, d, hidden, dropout),
        "cluster_head": lambda: ClusterHead(d, cfg.clustering.K, cfg.clustering.scale),
    }
    return nn.ModuleDict({name: builders[name]() for name in MODEL_PARTS if name in wanted})


def payload_checksum(payload: Any) -> str:
    """A BLAKE2b digest of a checkpoint's contents: every tensor's dtype, shape and bytes, and
    every other value's repr, walked in key order (the "checksum" entry itself left out)."""
    digest = hashlib.blake2b(digest_size=16)

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"T{tensor.dtype}{tuple(value.shape)}".encode())
            digest.update(memoryview(tensor.view(torch.uint8).numpy()))
        elif isinstance(value, dict):
            digest.update(b"{")
            for key in sorted(value, key=repr):
                if key != CHECKSUM_KEY:
                    digest.update(repr(key).encode())
                    feed(value[key])
            digest.update(b"}")
        elif isinstance(value, list | tuple):
            digest.update(b"[")
            for item in value:
                feed(item)
            digest.update(b"]")
        else:
            digest.update(repr(value).encode())

    feed(payload)
    return digest.hexdigest()


def verify_checksum(payload: dict[str, Any], path: Path) -> None:
    """UserError when a checkpoint's contents do not match the checksum saved in it (a flipped
    bit on disk or in a copy); a checkpoint from before checksums passes."""
    saved = payload.get(CHECKSUM_KEY)
    if saved is not None and saved != payload_checksum(payload):
        raise UserError(
            f"checkpoint {path} is damaged: its contents do not match the checksum saved with "
            "it; use another copy or train again."
        )


def previous_checkpoint(path: Path) -> Path:
    """Where `save_checkpoint(..., keep_previous=True)` keeps the checkpoint it replaced."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(payload: dict[str, Any], path: Path, keep_previous: bool = False) -> None:
    """Write a checkpoint dict with its checksum atomically (temp file + fsync + rename).
    `keep_previous` first moves the checkpoint it replaces to `previous_checkpoint(path)`, which
    `load_resumable` falls back to when `path` turns out damaged."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    payload = {**payload, CHECKSUM_KEY: payload_checksum(payload)}
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not keep a partial checkpoint
        raise
    if keep_previous and path.exists():
        os.replace(path, previous_checkpoint(path))
    os.replace(tmp, path)


def load_resumable(path: Path) -> tuple[dict[str, Any], Path] | None:
    """The checkpoint to resume from and its file: `path`, or when it is damaged or missing,
    the one it replaced (`previous_checkpoint`), with a warning on stderr; None when there is
    neither."""
    previous = previous_checkpoint(path)
    if path.exists():
        try:
            return load_checkpoint(path), path
        except UserError as err:
            if not previous.exists():
                raise
            print(f"warning: {err} Resuming from the one before it, {previous}.", file=sys.stderr)
    elif not previous.exists():
        return None
    return load_checkpoint(previous), previous


def read_checkpoint_file(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The dict of a checkpoint file of either kind, read with `weights_only=True` (tensors,
    numbers, strings and containers only) and its checksum verified; a missing, damaged or
    foreign file is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; give a RUN/checkpoints/*.pt file.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for a damaged or foreign file
        raise UserError(
            f"cannot read checkpoint {path} ({short_reason(err)}); it is damaged or not a "
            "coincide checkpoint."
        ) from err
    if not isinstance(payload, dict) or checkpoint_kind(payload) is None:
        raise UserError(
            f"{path} is neither a training nor a fine-tuning checkpoint of coincide; give a run "
            "folder or a checkpoint file from one."
        )
    verify_checksum(payload, path)
    return payload


def checkpoint_kind(payload: dict[str, Any]) -> str | None:
    """ "train", "finetune" or None (not a coincide checkpoint)."""
    if payload.get("format") == CHECKPOINT_FORMAT:
        return "train"
    if payload.get("format") == FINETUNE_FORMAT or (
        "format" not in payload and set(payload) >= FINETUNE_KEYS
    ):
        return "finetune"
    return None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training checkpoint (written by `save_checkpoint`; see the module docstring)."""
    payload = read_checkpoint_file(path, map_location)
    if checkpoint_kind(payload) != "train":
        raise UserError(
            f"{path} is not a coincide training checkpoint; give a RUN/checkpoints file."
        )
    if payload.get("version") != CHECKPOINT_VERSION:
        raise UserError(
            f"{path} has checkpoint version {payload.get('version')}, this coincide reads "
            f"{CHECKPOINT_VERSION}; retrain with this version."
        )
    return payload


def load_finetune_checkpoint(path: Path) -> dict[str, Any]:
    """Read a fine-tuning checkpoint (`coincide finetune`'s RUN/finetune/NAME/checkpoint.pt)."""
    payload = read_checkpoint_file(path)
    if checkpoint_kind(payload) != "finetune":
        raise UserError(
            f"{path} is not a coincide fine-tuning checkpoint; delete it and fine-tune again."
        )
    return payload


def checkpoint_config(payload: dict[str, Any]) -> Config:
    """The resolved configuration stored in a checkpoint."""
    return config_from_dict(payload["config"])


def load_models(path: str | Path, map_location: str | torch.device = "cpu") -> nn.ModuleDict:
    """Rebuild the models of a checkpoint from it alone, in eval mode.

    Returns a ModuleDict with the parts the run trained: "audio" (f), and as used "image" (g),
    "aa_head", "av_head", "cluster_head". `models["audio"](logmel)` embeds `(B, 1, mel, time)`.
    """
    payload = load_checkpoint(Path(path), map_location)
    models = build_models(checkpoint_config(payload), payload["parts"])
    models.load_state_dict(payload["models"])
    return models.to(map_location).eval()


def run_checkpoint(run_dir: str | Path, which: str = "best", announce: bool = True) -> Path:
    """The checkpoint of a run folder that a command uses: `best` (default) or `last`.

    `best` falls back to last.pt for a run trained before best.pt existed, or one whose stages
    were never measured on held-out media. With `announce`, one line on stderr says which file
    is used and why, so a user knows which weights a result comes from.
    """
    run_dir = Path(run_dir)
    if which not in ("best", "last"):
        raise UserError(f"checkpoint choice {which!r} is unknown; use best or last.")
    folder = run_dir / CHECKPOINTS_DIR
    last, best = folder / LAST_CHECKPOINT, folder / BEST_CHECKPOINT
    if not last.is_file() and not best.is_file():
        raise UserError(
            f"{run_dir} holds no {CHECKPOINTS_DIR}/{LAST_CHECKPOINT}; train it first with "
            f"`coincide train {run_dir} --store STORE`."
        )
    if which == "best" and best.is_file():
        info = read_best_info(run_dir)
        why = ""
        if info is not None:
            why = (
                f" (best held-out loss {info['value']:.4f} of stage '{info['stage']}' at step "
                f"{info['step']})"
            )
        chosen, note = best, f"using {best}{why}; --checkpoint {last} for the last weights"
    else:
        chosen = last
        note = f"using {last}" + (" (the run has no best.pt)" if which == "best" else "")
    if announce:
        print(f"coincide: {note}", file=sys.stderr, flush=True)
    return chosen


def read_best_info(run_dir: str | Path) -> dict[str, Any] | None:
    """RUN/checkpoints/best.json (what best.pt is), or None when the run has none."""
    return read_json_or_none(
        Path(run_dir) / CHECKPOINTS_DIR / BEST_INFO, "delete it and best.pt to train again"
    )


def write_best_info(run_dir: str | Path, info: dict[str, Any]) -> None:
    """Write best.json atomically, after best.pt itself (so it never describes a missing file)."""
    write_json_atomic(Path(run_dir) / CHECKPOINTS_DIR / BEST_INFO, info)


# The keys of a fine-tuning checkpoint (`coincide finetune`: classifier/train.py writes it).
FINETUNE_KEYS = frozenset(
    {"model", "optimizer", "step", "config", "encoder_config", "head_config", "classes"}
)
