"""Where a training run is, and what its run folder holds about it (`coincide.train.loop` keeps
the training itself): the resume position and the checkpoint payload, state.json (finished
stages, where training is), best.pt with best.json (the stage's best held-out weights) and the
checks that a checkpoint may be resumed and the stages fit the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from coincide.config.settings import Config, StageConfig
from coincide.data.pairs import SamplerState
from coincide.errors import UserError
from coincide.files import write_json_atomic
from coincide.run_folder import BEST_CHECKPOINT, CHECKPOINTS_DIR, STATE_FILE
from coincide.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    load_checkpoint,
    read_best_info,
    save_checkpoint,
    write_best_info,
)
from coincide.train.objective import stage_pair_kinds
from coincide.train.plateau import Plateau
from coincide.train.report import weights_text
from coincide.train.validation import HeldOut


@dataclass
class Position:
    """Where training is: global optimizer steps, current stage and its progress."""

    step: int = 0
    stage_index: int = 0
    stage_step: int = 0
    next_batch: int = 0
    plateau: dict[str, Any] | None = None
    finished: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> Position:
        position = cls(
            step=int(ckpt["step"]),
            stage_index=int(ckpt["stage_index"]),
            stage_step=int(ckpt["stage_step"]),
            next_batch=SamplerState(**ckpt["sampler"]).next_batch,
            plateau=ckpt["plateau"],
            finished=list(ckpt["finished"]),
        )
        if ckpt["stage_finished"]:  # saved at a stage end: continue with the next stage
            position.stage_index += 1
            position.stage_step = position.next_batch = 0
            position.plateau = None
        return position


def write_state(
    run_dir: Path,
    stages: Sequence[StageConfig],
    audio_only: bool,
    pos: Position,
    extra: list[dict[str, Any]] | None = None,
) -> None:
    """RUN/state.json (atomically): the curriculum, its finished stages (plus `extra`, the
    stage finishing now) and, while not done, the current stage and its step."""
    finished = pos.finished + (extra or [])
    state = {
        "stages": [s.name for s in stages],
        "audio_only": audio_only,
        "finished_stages": [r["name"] for r in finished],
        "finished": finished,
        "step": pos.step,
        "done": len(finished) == len(stages),
    }
    if not state["done"]:
        state["stage"] = stages[min(pos.stage_index, len(stages) - 1)].name
        state["stage_step"] = pos.stage_step
    write_json_atomic(run_dir / STATE_FILE, state)


def check_resumable(
    ckpt: dict[str, Any],
    cfg: Config,
    stages: Sequence[StageConfig],
    audio_only: bool,
    models: torch.nn.ModuleDict,
    last_path: Path,
) -> None:
    """The run folder's checkpoint must come from the same models, seed and stages."""
    saved = ckpt["config"]
    now = cfg.to_dict()
    saved_stages = _saved_stages(ckpt, audio_only)
    checks = {
        "model": (saved["model"], now["model"]),
        "clustering.K": (saved["clustering"]["K"], now["clustering"]["K"]),
        "clustering.scale": (saved["clustering"]["scale"], now["clustering"]["scale"]),
        "seed": (saved["seed"], now["seed"]),
        "the stages": ([s["name"] for s in saved_stages], [s.name for s in stages]),
    }
    for key, (before, after) in checks.items():
        if before != after:
            raise UserError(
                f"{last_path} was trained with another {key} ({before} vs {after} "
                "now); resume with the run's own config (omit --config and --set) or "
                "use a new run folder."
            )
    if list(models.keys()) != list(ckpt["parts"]):
        raise UserError(
            f"{last_path} holds model parts {ckpt['parts']}, this curriculum needs "
            f"{list(models.keys())}; use a new run folder."
        )


def reweighted_stages(
    ckpt: dict[str, Any], stages: Sequence[StageConfig], audio_only: bool
) -> list[str]:
    """Notes for the stages whose loss weights differ from those the checkpoint's run was
    given (`--set curriculum.alpha=...` on resume): allowed, so that the stages still to come
    can be weighted anew, but said, because config.yaml then records only the new weights."""
    before = {s["name"]: s["losses"] for s in _saved_stages(ckpt, audio_only)}
    notes = []
    for stage in stages:
        old = before.get(stage.name)
        if old is not None and old != stage.losses:
            notes.append(
                f"note: stage '{stage.name}' now weighs {weights_text(stage.losses)} "
                f"(the run started with {weights_text(old)})"
            )
    return notes


def _saved_stages(ckpt: dict[str, Any], audio_only: bool) -> list[dict[str, Any]]:
    """The stages (name, losses, ...) of the configuration a checkpoint was trained with."""
    curriculum = ckpt["config"]["curriculum"]
    return curriculum["audio_only_stages"] if audio_only else curriculum["stages"]


@dataclass
class TrainingState:
    """What a checkpoint of a running curriculum is made of."""

    models: torch.nn.ModuleDict
    optimizer: torch.optim.Optimizer
    stages: Sequence[StageConfig]
    pos: Position
    plateau: Plateau


def checkpoint_payload(
    cfg: Config,
    state: TrainingState,
    finished: bool,
    record: dict[str, Any] | None,
    device: torch.device,
    cuda: bool,
) -> dict[str, Any]:
    """The checkpoint dict (`coincide.train.checkpoint` format): models, optimizer, where the
    curriculum is (stage, steps, sampler, plateau), the RNG states and the finished stages
    (with `record`, the stage finishing now)."""
    pos = state.pos
    rng = {"torch": torch.get_rng_state()}
    if cuda:
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": cfg.to_dict(),
        "parts": list(state.models.keys()),
        "models": state.models.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "step": pos.step,
        "stage_index": pos.stage_index,
        "stage": state.stages[pos.stage_index].name,
        "stage_step": pos.stage_step,
        "stage_finished": finished,
        "sampler": SamplerState(cfg.seed, pos.stage_index, pos.next_batch).to_dict(),
        "plateau": state.plateau.state_dict(),
        "rng": rng,
        "finished": pos.finished + ([record] if record else []),
    }


def check_stages(stages: Sequence[StageConfig], audio_only: bool, store_path: Path) -> None:
    """Every stage's losses exist, and the store has what they need."""
    for stage in stages:
        kinds = stage_pair_kinds(stage)  # raises for an unknown loss name
        if audio_only and "av" in kinds:
            raise UserError(
                f"stage '{stage.name}' needs frames (loss av) but store {store_path} "
                "has none; remove av from curriculum.audio_only_stages."
            )


def resume(
    ckpt: dict[str, Any],
    models: torch.nn.ModuleDict,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    cuda: bool,
) -> Position:
    """Load a checkpoint's models, optimizer and RNG states; returns where it left off."""
    models.load_state_dict(ckpt["models"])
    optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if cuda and "cuda" in ckpt["rng"]:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
    return Position.from_checkpoint(ckpt)


def restore_best(
    run_dir: Path,
    models: torch.nn.ModuleDict,
    best_state: dict[str, torch.Tensor] | None,
    stage_index: int,
    step: int,
) -> int | None:
    """Load the stage's best held-out weights (`best_state`, the in-memory copy, else
    checkpoints/best.pt when the run resumed after the best measurement) unless they are the
    current ones; returns their step, or None when nothing was restored."""
    best_path = run_dir / CHECKPOINTS_DIR / BEST_CHECKPOINT
    info = read_best_info(run_dir) if best_path.is_file() else None
    if info is None or int(info["stage_index"]) != stage_index or info["step"] == step:
        return None
    if best_state is None:
        best_state = load_checkpoint(best_path)["models"]
    models.load_state_dict(best_state)
    return int(info["step"])


def save_best(run_dir: Path, payload: dict[str, Any], held: HeldOut) -> None:
    """checkpoints/best.pt: the checkpoint `payload` without the optimizer state (nothing
    resumes from it), then best.json saying what it is (stage, step, held-out value, the
    terms' losses and AUCs)."""
    payload = {**payload, "optimizer": {}}
    save_checkpoint(payload, run_dir / CHECKPOINTS_DIR / BEST_CHECKPOINT)
    info = {
        "stage": payload["stage"],
        "stage_index": payload["stage_index"],
        "step": payload["step"],
        "stage_step": payload["stage_step"],
        "value": held.criterion,
        "losses": held.losses,
        "auc": held.auc,
    }
    write_best_info(run_dir, info)
