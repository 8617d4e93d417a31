"""A stage's objective: embed one batch, then a weighted sum of named loss terms.

Loss terms are looked up by name in `LOSS_TERMS`, so a curriculum stage (and every row of
Table 1) is a configuration: `{av: 0.9, aa: 0.1}` is L_coin. A term declares which pair kinds
its batches must carry and which model parts it trains; a new term (the triplet losses of the
evaluation issue, say) is one more class in the registry.

Distributed runs: the second members of the pairs (f(x2), g(v2)) are gathered from every rank
with gradient, so the negatives span the global batch; the cluster marginal is averaged over
ranks. Both collectives are the identity in a single process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from coincide import dist
from coincide.config.settings import Config, StageConfig
from coincide.errors import UserError
from coincide.losses import (
    ClusterLoss,
    CoincidenceLoss,
    RandomNegativeCoincidenceLoss,
    fused_cluster_terms,
    random_negative_indices,
)
from coincide.models.encoders import images_to_tensor


@dataclass
class StepEmbeddings:
    """The embeddings of one batch on this rank.

    anchor: f(x1) `(B_local, d)`; aa: f(x2) of all ranks `(B_global, d)` or None;
    av: g(v2) of all ranks `(B_global, d)` or None; offset: the column of this rank's first
    pair in the gathered tensors (rank * B_local); collective: whether terms reduce over ranks.
    """

    anchor: torch.Tensor
    aa: torch.Tensor | None
    av: torch.Tensor | None
    offset: int
    collective: bool


class LossTerm(nn.Module):
    """One named term of a stage objective: `forward(parts, embeddings) -> scalar`.

    pairs: pair kinds its batches must carry; parts: model parts it reads besides f;
    monitored: whether it counts in the held-out coincidence loss of the plateau rule.
    `stats` (filled by forward, detached) carries extra values for the monitor.
    """

    name: ClassVar[str]
    pairs: ClassVar[tuple[str, ...]]
    parts: ClassVar[tuple[str, ...]]
    monitored: ClassVar[bool]

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.stats: dict[str, torch.Tensor] = {}


class _CoincidenceTerm(LossTerm):
    """L_AA or L_AV (equations 1 and 2) on the all-pairs logits, or the random-negative variant."""

    monitored = True

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.negatives = cfg.curriculum.negatives
        self.all_pairs = CoincidenceLoss(cfg.curriculum.hard_negatives)
        self.held_out = CoincidenceLoss()
        self.random_negative = RandomNegativeCoincidenceLoss()

    def _loss(
        self, head: nn.Module, anchor: torch.Tensor, partners: torch.Tensor, offset: int
    ) -> torch.Tensor:
        # Held-out evaluation (eval mode) always uses all pairs: a fixed, deterministic measure,
        # and keeps the logits for the held-out AUC (coincide.train.validation).
        if not self.training or self.negatives == "all":
            logits = head.pairwise_logits(anchor, partners)
            if not self.training:
                # The held-out loss stays equation 1 whatever the training weights: the plateau
                # rule and best.pt compare one measure across runs and stages.
                self.stats = {"pair_logits": logits.detach()}
                return self.held_out(logits, positive_offset=offset)
            return self.all_pairs(logits, positive_offset=offset)
        # One random negative per positive: partner pi(offset + i) != offset + i.
        rows = torch.arange(anchor.shape[0], device=anchor.device) + offset
        derangement = random_negative_indices(partners.shape[0]).to(anchor.device)
        positive = head(anchor, partners[rows])
        negative = head(anchor, partners[derangement[rows]])
        return self.random_negative(positive, negative)


class AVCoincidence(_CoincidenceTerm):
    """L_AV (equation 2): p_AV on [f(x1), g(v2)]."""

    name = "av"
    pairs = ("av",)
    parts = ("image", "av_head")

    def forward(self, parts: nn.ModuleDict, emb: StepEmbeddings) -> torch.Tensor:
        assert emb.av is not None  # the batch carries AV partners for this term
        return self._loss(parts["av_head"], emb.anchor, emb.av, emb.offset)


class AACoincidence(_CoincidenceTerm):
    """L_AA (equation 1): p_AA on [f(x1), f(x2)]."""

    name = "aa"
    pairs = ("aa",)
    parts = ("aa_head",)

    def forward(self, parts: nn.ModuleDict, emb: StepEmbeddings) -> torch.Tensor:
        assert emb.aa is not None  # the batch carries AA partners for this term
        return self._loss(parts["aa_head"], emb.anchor, emb.aa, emb.offset)


class Clustering(LossTerm):
    """L_clust (paper 3.2) on the anchors' cluster logits, marginal over the global batch."""

    name = "clust"
    pairs = ()
    parts = ("cluster_head",)
    monitored = False

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.loss = ClusterLoss(gamma=cfg.clustering.gamma)

    def forward(self, parts: nn.ModuleDict, emb: StepEmbeddings) -> torch.Tensor:
        logits = parts["cluster_head"](emb.anchor)
        point_entropy, marginal = fused_cluster_terms(logits)
        if emb.collective:
            marginal = dist.all_reduce_mean(marginal)
        self.stats = {"assignments": logits.detach().argmax(dim=-1), "marginal": marginal.detach()}
        return self.loss.from_terms(point_entropy, marginal)


LOSS_TERMS: dict[str, type[LossTerm]] = {
    term.name: term for term in (AVCoincidence, AACoincidence, Clustering)
}


def term_class(name: str, stage: str) -> type[LossTerm]:
    """The registered loss term called `name` (UserError naming the stage when unknown)."""
    if name not in LOSS_TERMS:
        raise UserError(
            f"stage '{stage}' uses loss '{name}', which is unknown; use one of "
            f"{', '.join(LOSS_TERMS)}."
        )
    return LOSS_TERMS[name]


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
