"""Models of a run and their checkpoints.

A checkpoint is one dict:

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

Writes are atomic (temp file in the same folder, fsync, os.replace): a run killed at any moment
leaves the previous checkpoint or the new one, never half of one. bf16 autocast needs no loss
scaler, so there is none to save.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from coincide.config import Config, config_from_dict
from coincide.errors import UserError
from coincide.models.encoders import build_encoder
from coincide.models.heads import ClusterHead, CoincidenceHead

CHECKPOINT_FORMAT = "coincide-train-checkpoint"
CHECKPOINT_VERSION = 1
# f, g, p_AA, p_AV, p_clust: the names of the parts in a run's ModuleDict.
MODEL_PARTS = ("audio", "image", "aa_head", "av_head", "cluster_head")


def build_models(cfg: Config, parts: Iterable[str]) -> nn.ModuleDict:
    """Freshly initialised model parts (a subset of MODEL_PARTS), in MODEL_PARTS order."""
    wanted = set(parts)
    unknown = wanted - set(MODEL_PARTS)
    if unknown:
        raise ValueError(f"unknown model parts {sorted(unknown)}; known: {MODEL_PARTS}")
    d = cfg.model.embed_dim
    hidden = cfg.model.coincidence_hidden
    builders = {
        "audio": lambda: build_encoder(cfg.model.audio),
        "image": lambda: build_encoder(cfg.model.image),
        "aa_head": lambda: CoincidenceHead(d, hidden),
        "av_head": lambda: CoincidenceHead(d, hidden),
        "cluster_head": lambda: ClusterHead(d, cfg.clustering.K, cfg.clustering.scale),
    }
    return nn.ModuleDict({name: builders[name]() for name in MODEL_PARTS if name in wanted})


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """Write a checkpoint dict atomically (temp file + fsync + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (tensors, numbers, strings only)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; give a RUN/checkpoints/*.pt file.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for a damaged or foreign file
        raise UserError(
            f"cannot read checkpoint {path} ({err}); it is damaged or not one."
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UserError(
            f"{path} is not a coincide training checkpoint; give a RUN/checkpoints file."
        )
    if payload.get("version") != CHECKPOINT_VERSION:
        raise UserError(
            f"{path} has checkpoint version {payload.get('version')}, this coincide reads "
            f"{CHECKPOINT_VERSION}; retrain with this version."
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
