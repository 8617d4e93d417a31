"""A stage's objective: embed one batch, then a weighted sum of named loss terms.

Loss terms are looked up by name in `coincide.train.terms.LOSS_TERMS`, so a curriculum stage
(and every row of Table 1) is a configuration: `{av: 0.9, aa: 0.1}` is L_coin.
"""

from __future__ import annotations

import torch
from torch import nn

from coincide import dist
from coincide.config.settings import Config, StageConfig
from coincide.models.encoders import images_to_tensor
from coincide.train.terms import StepEmbeddings, term_class


def active_losses(stage: StageConfig) -> dict[str, float]:
    """The stage's loss weights without zero-weight terms (which would train nothing)."""
    return {name: weight for name, weight in stage.losses.items() if weight != 0.0}


def stage_pair_kinds(stage: StageConfig) -> tuple[str, ...]:
    """Pair kinds the batches of a stage must carry (sorted)."""
    kinds = {kind for name in active_losses(stage) for kind in term_class(name, stage.name).pairs}
    return tuple(sorted(kinds))


def stage_parts(stage: StageConfig) -> tuple[str, ...]:
    """Model parts a stage trains: f ("audio") always, plus what its terms read."""
    parts = {"audio"}
    for name in active_losses(stage):
        parts.update(term_class(name, stage.name).parts)
    return tuple(sorted(parts))


class StageObjective(nn.Module):
    """The objective of one stage: `forward(batch) -> {"total": scalar, term name: scalar}`.

    Holds the model parts the stage trains (so DistributedDataParallel sees exactly those) and
    its loss terms with their weights. `collective=False` evaluates on this rank's batch alone
    (the held-out evaluation, where every rank sees the same pairs).
    """

    def __init__(self, cfg: Config, stage: StageConfig, models: nn.ModuleDict) -> None:
        super().__init__()
        self.weights = active_losses(stage)
        self.parts = nn.ModuleDict({name: models[name] for name in stage_parts(stage)})
        self.terms = nn.ModuleDict(
            {name: term_class(name, stage.name)(cfg) for name in self.weights}
        )
        self.kinds = stage_pair_kinds(stage)
        self.channels_last = False
        self.per_branch_batchnorm = cfg.curriculum.aa_batchnorm == "per_branch"

    def forward(
        self, batch: dict[str, torch.Tensor], collective: bool = True
    ) -> dict[str, torch.Tensor]:
        """batch: device tensors from `coincide.data.read_batch` -> losses (scalars)."""
        emb = self.embed(batch, collective)
        losses: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=emb.anchor.device)
        for name, weight in self.weights.items():
            losses[name] = self.terms[name](self.parts, emb)
            total = total + weight * losses[name].float()
        losses["total"] = total
        return losses

    def embed(self, batch: dict[str, torch.Tensor], collective: bool) -> StepEmbeddings:
        """f on the anchors and AA partners (in one pass, or one each with
        curriculum.aa_batchnorm = per_branch), g on the AV frames; gather."""
        f = self.parts["audio"]
        audio = batch["audio"]
        b = audio.shape[0]
        branches = [audio]
        if "aa" in self.kinds:
            branches.append(batch["aa_audio"])
            if not self.per_branch_batchnorm:
                branches = [torch.cat(branches)]
        if self.channels_last:
            branches = [x.contiguous(memory_format=torch.channels_last) for x in branches]
        audio_emb = torch.cat([f(x) for x in branches]) if len(branches) > 1 else f(branches[0])
        gather = dist.all_gather_with_grad if collective else _identity
        aa = gather(audio_emb[b:]) if "aa" in self.kinds else None
        av = None
        if "av" in self.kinds:
            images = images_to_tensor(batch["av_frames"])  # a channels_last view
            if not self.channels_last:
                # Plain NCHW off the GPU: CPU (oneDNN) convolution backward with channels_last
                # input crashes the process for layers of 4-8 channels (torch 2.14, "tiny").
                images = images.contiguous()
            av = gather(self.parts["image"](images))
        offset = dist.rank() * b if collective else 0
        return StepEmbeddings(audio_emb[:b], aa, av, offset, collective)

    def monitored_loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """The held-out quantity of the plateau rule: the weighted coincidence terms (the whole
        objective when the stage has none)."""
        monitored = [n for n in self.weights if type(self.terms[n]).monitored]
        if not monitored:
            return losses["total"]
        value = torch.zeros((), device=losses["total"].device)
        for name in monitored:
            value = value + self.weights[name] * losses[name].float()
        return value

    def term_stats(self) -> dict[str, torch.Tensor]:
        """Detached extras of the last forward (cluster assignments and marginal)."""
        stats: dict[str, torch.Tensor] = {}
        for term in self.terms.values():
            stats.update(term.stats)
        return stats


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x
