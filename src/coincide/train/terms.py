"""The loss terms of the training objective, one class each, and their registry.

A term embeds nothing itself: it reads the batch's embeddings (`StepEmbeddings`) and returns
its loss. It declares which pair kinds its batches must carry and which model parts it trains.
`LOSS_TERMS` lists every term by the name a curriculum stage uses (`av`, `aa`, `clust`, and the
triplet terms of Table 1 rows a and c, `triplet_time` and `triplet_label`, whose batches
`coincide.train.triplets` samples); a new term is one more class here and one more entry there.

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
from coincide.config.settings import Config
from coincide.errors import UserError
from coincide.losses import (
    ClusterLoss,
    CoincidenceLoss,
    RandomNegativeCoincidenceLoss,
    TripletLoss,
    fused_cluster_terms,
    random_negative_indices,
)


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


class ClusterTerm(LossTerm):
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


class _TripletTerm(LossTerm):
    """A triplet loss on f alone whose positives come in the batch's AA partner slot."""

    pairs = ("aa",)
    parts = ()
    monitored = True

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.loss = TripletLoss()


class TemporalTriplet(_TripletTerm):
    """Row c: triplet(f(x1_i), f(x2_i), f(x2_pi(i))) for a random derangement pi of the global
    batch's AA partners, i.e. the negative is a window of another media ([11], section 2.3)."""

    name = "triplet_time"
    sampler: ClassVar[str] = "coincidence"

    def forward(self, parts: nn.ModuleDict, emb: StepEmbeddings) -> torch.Tensor:
        assert emb.aa is not None  # the batch carries AA partners for this term
        rows = torch.arange(emb.anchor.shape[0], device=emb.anchor.device) + emb.offset
        derangement = random_negative_indices(emb.aa.shape[0]).to(emb.anchor.device)
        return self.loss(emb.anchor, emb.aa[rows], emb.aa[derangement[rows]])


class LabelTriplet(_TripletTerm):
    """Row a: triplet(f(a_i), f(p_i), f(a_{i+1 mod B})) on `LabelTripletSampler` batches, where
    p_i shares a class label with a_i and a_{i+1} shares none (the sampler's cycle rule).

    The AA partner slot carries the label positives, so the loop embeds them like AA partners.
    """

    name = "triplet_label"
    sampler: ClassVar[str] = "label"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        # Set by `stage_sampler`: on ordinary AA batches this term would silently train a
        # temporal triplet instead, so it refuses to run on batches it did not ask for.
        self.label_batches = False

    def forward(self, parts: nn.ModuleDict, emb: StepEmbeddings) -> torch.Tensor:
        if not self.label_batches:
            raise RuntimeError(
                "loss triplet_label runs on batches of LabelTripletSampler; build the stage's "
                "sampler with coincide.train.triplets.stage_sampler"
            )
        assert emb.aa is not None  # the batch carries the label positives
        b = emb.anchor.shape[0]
        positives = emb.aa[emb.offset : emb.offset + b]
        # The cycle is per rank: this rank's anchors only (the gathered partners are not).
        negatives = emb.anchor.roll(-1, dims=0)
        return self.loss(emb.anchor, positives, negatives)


# Every term, by the name a stage's `losses` uses.
LOSS_TERMS: dict[str, type[LossTerm]] = {
    term.name: term
    for term in (AVCoincidence, AACoincidence, ClusterTerm, TemporalTriplet, LabelTriplet)
}


def term_class(name: str, stage: str) -> type[LossTerm]:
    """The registered loss term called `name` (UserError naming the stage when unknown)."""
    if name not in LOSS_TERMS:
        raise UserError(
            f"stage '{stage}' uses loss '{name}', which is unknown; use one of "
            f"{', '.join(LOSS_TERMS)}."
        )
    return LOSS_TERMS[name]
