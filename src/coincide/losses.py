"""The losses of the paper, one `nn.Module` each: tensors in, scalar out.

No loss gathers, reduces or moves tensors between devices: in a distributed run the caller
gathers the embeddings (`coincide.dist.all_gather_with_grad`) or reduces the cluster marginal
(`coincide.dist.all_reduce_mean`) and passes the result in. Every loss computes in at least
float32, so bf16 logits from autocast are fine.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from coincide.models.compiling import CompiledOrEager


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 -> float32 (autocast outputs); float32 and float64 stay as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class CoincidenceLoss(nn.Module):
    """L_AA / L_AV, equations 1 and 2: balanced cross-entropy over all in-batch pairs.

    L = -(1/B) sum_i log p_ii - (1/(B(B-1))) sum_{i != j} log(1 - p_ij),  p_ij = sigmoid(l_ij),

    where l_ij is the coincidence logit of the pair (x1_i, x2_j): the B coinciding pairs are the
    positives and every one of the B(B-1) other combinations is a negative, with no mining.

    Distributed use: rank r holds B_local pairs, gathers the second members of all ranks (B_global
    = world * B_local columns, rank r's own at columns r * B_local ...) and passes its
    (B_local, B_global) logits with `positive_offset = r * B_local`. Each rank's loss is then
        L_r = -(1/B_local) sum_{i in r} log p_ii
              - (1/(B_local (B_global - 1))) sum_{i in r, j != i} log(1 - p_ij)
    and the mean of L_r over ranks equals L on the global batch exactly (B = world * B_local).
    DistributedDataParallel averages gradients over ranks, so it optimises that mean.

    `hardness` beta > 0 (not in the paper; 0 is equation 1) weights the negatives of each row by
    w_ij = (B_global - 1) softmax_j(beta l_ij) over that row's negatives, computed without
    gradient, so the row's negative weights still sum to B_global - 1 (the loss keeps its scale
    and its balance) but the negatives the head finds hardest count most: the importance
    weights of Robinson et al. (ICLR 2021), "Contrastive learning with hard negative samples".
    When one cue (a place, a device) already tells most pairs apart, the negatives that share
    it are the hard ones, and this turns the gradient toward what else tells them apart.
    """

    def __init__(self, hardness: float = 0.0) -> None:
        super().__init__()
        if not (hardness >= 0.0 and math.isfinite(hardness)):
            raise ValueError(f"hardness must be a finite number >= 0, got {hardness}")
        self.hardness = hardness

    def forward(self, logits: torch.Tensor, positive_offset: int = 0) -> torch.Tensor:
        """logits `(B_local, B_global)`, positives at (i, positive_offset + i) -> scalar."""
        if logits.dim() != 2:
            raise ValueError(
                f"expected a (B_local, B_global) logit matrix, got {tuple(logits.shape)}"
            )
        b_local, b_global = logits.shape
        if b_global < 2 or positive_offset < 0 or positive_offset + b_local > b_global:
            raise ValueError(
                f"positives at columns {positive_offset}..{positive_offset + b_local - 1} do not "
                f"fit a ({b_local}, {b_global}) logit matrix with at least 2 columns"
            )
        logits = _upcast(logits)
        rows = torch.arange(b_local, device=logits.device)
        columns = rows + positive_offset
        is_positive = torch.zeros_like(logits, dtype=torch.bool)
        is_positive[rows, columns] = True
        # log(1 - sigmoid(l)) = logsigmoid(-l): exact for any logit, no log(0).
        positive_term = -F.logsigmoid(logits[rows, columns]).mean()
        negative_losses = F.logsigmoid(-logits).masked_fill(is_positive, 0.0)
        if self.hardness > 0.0:
            with torch.no_grad():
                scores = (self.hardness * logits).masked_fill(is_positive, -math.inf)
                weights = torch.softmax(scores, dim=1) * (b_global - 1)
            negative_losses = negative_losses * weights
        negative_term = -negative_losses.sum() / (b_local * (b_global - 1))
        return positive_term + negative_term


class RandomNegativeCoincidenceLoss(nn.Module):
    """The L3 recipe (Table 1 rows d and h): one random non-coinciding partner per positive.

    L = -mean_i log sigmoid(pos_i) - mean_n log(1 - sigmoid(neg_n)): balanced like equation 1,
    but the negatives are the pairs (x1_i, x2_{pi(i)}) for a random derangement pi (see
    `random_negative_indices`) instead of all B(B-1) pairs. Usage with a CoincidenceHead:
        partner = random_negative_indices(B, generator).to(e2.device)
        loss = RandomNegativeCoincidenceLoss()(head(e1, e2), head(e1, e2[partner]))
    """

    def forward(self, positive_logits: torch.Tensor, negative_logits: torch.Tensor) -> torch.Tensor:
        """positive_logits `(B,)` of the coinciding pairs, negative_logits `(N,)` -> scalar."""
        if positive_logits.numel() == 0 or negative_logits.numel() == 0:
            raise ValueError("need at least one positive and one negative logit")
        positive_term = -F.logsigmoid(_upcast(positive_logits)).mean()
        negative_term = -F.logsigmoid(-_upcast(negative_logits)).mean()
        return positive_term + negative_term


def random_negative_indices(
    batch_size: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A uniformly random derangement of range(batch_size): `(batch_size,)` int64, pi[i] != i.

    Pair i's negative partner is x2[pi[i]]; a permutation uses every second member exactly once.
    Drawn by rejection (a random permutation is a derangement with probability ~1/e).
    """
    if batch_size < 2:
        raise ValueError(f"a derangement needs at least 2 elements, got {batch_size}")
    identity = torch.arange(batch_size)
    while True:
        permutation = torch.randperm(batch_size, generator=generator)
        if not bool((permutation == identity).any()):
            return permutation


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of distributions along the last axis, `(..., K)` -> `(...)`.

    The clamp keeps log finite (and its gradient finite) for empty entries, whose p log p is 0.
    """
    tiny = torch.finfo(probs.dtype).tiny
    return -(probs * probs.clamp_min(tiny).log()).sum(-1)


def cluster_marginal(logits: torch.Tensor) -> torch.Tensor:
    """Cluster logits `(B, K)` -> the batch's mean assignment distribution `(K,)` (float32)."""
    return torch.softmax(_upcast(logits), dim=-1).mean(0)


def cluster_terms(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster logits `(B, K)` -> (mean point entropy (1/B) sum_i H[p_i], marginal (1/B) sum_i
    p_i), both differentiable, from one log-softmax.

    At the paper's K = 1M every pass over the (B, K) logits is gigabytes, so both terms share
    one softmax (the loss used to take two). -sum p log p with log p from log_softmax is exact
    even where p underflows to 0.
    """
    log_probs = F.log_softmax(_upcast(logits), dim=-1)
    probs = log_probs.exp()
    point_entropy = -(probs * log_probs).sum(-1).mean()
    return point_entropy, probs.mean(0)


# Compiled at the first call for CUDA tensors (see fused_cluster_terms).
_compiled_cluster_terms = CompiledOrEager(cluster_terms, "the clustering loss", dynamic=False)


def fused_cluster_terms(
    logits: torch.Tensor, compile: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`cluster_terms`, compiled with torch.compile (Inductor fuses the softmax, the entropies
    and the column mean, forward and backward, into a few passes over the (B, K) logits) when
    `compile` (default: for CUDA tensors); eager otherwise. If compiling fails (no Triton, no C++
    compiler, an unsupported GPU), it warns once and stays eager: the numbers are the same.
    """
    if compile is None:
        compile = logits.is_cuda
    if not compile:
        return cluster_terms(logits)
    return _compiled_cluster_terms(logits)


class ClusterLoss(nn.Module):
    """L_clust = (1/B) sum_i H[p_clust(f(x_i))] - gamma H[(1/B) sum_i p_clust(f(x_i))].

    The first term asks for confident assignments, the second for using every cluster; gamma = 1
    is mutual-information clustering, gamma > 1 (the paper's 1.1) avoids the trivial solution and
    allows a cold start.

    Distributed use: `point_entropy, marginal = cluster_terms(logits)`, then
    `loss.from_terms(point_entropy, all_reduce_mean(marginal))`, the marginal of the global batch
    (ranks hold equal batches). The mean over ranks of the per-rank losses is then L_clust on the
    global batch, and DistributedDataParallel's gradient averaging optimises it.
    """

    def __init__(self, gamma: float = 1.1) -> None:
        super().__init__()
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, marginal: torch.Tensor | None = None) -> torch.Tensor:
        """logits `(B, K)`, optional marginal `(K,)` (default: this batch's mean) -> scalar."""
        point_entropy, batch_marginal = cluster_terms(logits)
        return self.from_terms(point_entropy, batch_marginal if marginal is None else marginal)

    def from_terms(self, point_entropy: torch.Tensor, marginal: torch.Tensor) -> torch.Tensor:
        """L_clust from `cluster_terms`' mean point entropy and a marginal `(K,)`."""
        return point_entropy - self.gamma * _entropy(_upcast(marginal))


class ClusterStats(NamedTuple):
    """What the training monitor shows for clustering."""

    active_clusters: int  # distinct arg-max clusters in the batch
    marginal_entropy: float  # entropy (nats) of the mean assignment; log K when all are used


@torch.no_grad()
def cluster_stats(logits: torch.Tensor) -> ClusterStats:
    """Cluster logits `(B, K)` -> active clusters in the batch and entropy of its marginal."""
    active = int(torch.unique(logits.argmax(dim=-1)).numel())
    return ClusterStats(active, float(_entropy(cluster_marginal(logits))))


class TripletLoss(nn.Module):
    """Triplet loss for Table 1 rows a (explicit-label triplets) and c (temporal proximity,
    Jansen et al. 2018): mean_i max(0, D(a_i, p_i) - D(a_i, n_i) + margin).

    D is the squared Euclidean distance between length-normalised embeddings, 2 - 2 cos(u, v),
    so the margin lives on the same cosine scale as the QbE evaluation (range [0, 4]).
    """

    def __init__(self, margin: float = 0.1) -> None:
        super().__init__()
        self.margin = margin

    def forward(
        self, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor
    ) -> torch.Tensor:
        """anchor, positive, negative `(B, d)` -> scalar."""
        anchor, positive, negative = (
            F.normalize(_upcast(e), dim=-1) for e in (anchor, positive, negative)
        )
        positive_distance = (anchor - positive).pow(2).sum(-1)
        negative_distance = (anchor - negative).pow(2).sum(-1)
        return F.relu(positive_distance - negative_distance + self.margin).mean()


class ClassificationLoss(nn.Module):
    """L_class, equation 3: (1/B) sum_i H[y_i, p_class(f(x_i))].

    Single-label (softmax): targets are class indices `(B,)` or distributions `(B, C)`.
    Multi-label (one sigmoid per class): targets `(B, C)` in {0, 1}; H is the cross-entropy of the
    C Bernoulli outputs, i.e. summed over classes (the equation's per-example cross-entropy),
    then averaged over examples.
    """

    def __init__(self, multilabel: bool = False) -> None:
        super().__init__()
        self.multilabel = multilabel

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """logits `(B, C)`, targets as above -> scalar."""
        logits = _upcast(logits)
        if self.multilabel:
            per_class = F.binary_cross_entropy_with_logits(
                logits, targets.to(logits.dtype), reduction="none"
            )
            return per_class.sum(-1).mean()
        if targets.dtype.is_floating_point:
            return F.cross_entropy(logits, targets.to(logits.dtype))
        return F.cross_entropy(logits, targets)
