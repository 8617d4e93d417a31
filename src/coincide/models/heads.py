"""Heads on top of the embeddings: p_AA / p_AV, p_clust and p_class (paper sections 3 and 4)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from coincide.errors import UserError


class CoincidenceHead(nn.Module):
    """p_AA or p_AV: "a single 512-unit fully connected ReLU layer followed by a binary
    classification output layer (i.e., logistic regression)" on z = [e1, e2] in R^{2d}.

    Returns logits; the probability of coincidence is their sigmoid. `dropout` (not in the
    paper; 0 there) drops hidden units in train mode, against memorizing a small store; it has
    no parameters, so checkpoints are the same with or without it.
    """

    def __init__(self, embed_dim: int = 128, hidden: int = 512, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim < 1 or hidden < 1:
            raise UserError(
                f"Coincidence head sizes must be positive (embed_dim={embed_dim}, hidden={hidden})."
            )
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"Coincidence head dropout must be in [0, 1), got {dropout}.")
        self.embed_dim = embed_dim
        self.hidden = nn.Linear(2 * embed_dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden, 1)

    def forward(self, e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
        """Aligned pairs: e1, e2 `(batch, d)` -> coincidence logits `(batch,)`."""
        z = torch.cat([e1, e2], dim=-1)
        return self.output(self.dropout(F.relu(self.hidden(z)))).squeeze(-1)

    def pairwise_logits(
        self, e1: torch.Tensor, e2: torch.Tensor, max_elements: int = 2**28
    ) -> torch.Tensor:
        """All pairs: e1 `(B1, d)`, e2 `(B2, d)` -> logits `(B1, B2)`, (i, j) for [e1_i, e2_j].

        The first layer is linear in z, so W [e1_i, e2_j] + c = (W1 e1_i + c) + W2 e2_j: each side
        is projected once and the (B1, B2, 2d) concatenation never exists. The hidden activations
        (B1, B2, hidden) cannot be avoided; when they would exceed `max_elements` they are computed
        in blocks of rows, each block recomputed during backward (activation checkpointing), so
        neither the forward nor the autograd graph holds more than one block (the recomputation
        restores the RNG state, so it drops the same units).
        """
        d = self.embed_dim
        weight = self.hidden.weight
        e1_part = F.linear(e1, weight[:, :d], self.hidden.bias)  # (B1, hidden)
        e2_part = F.linear(e2, weight[:, d:])  # (B2, hidden)
        rows = max(1, max_elements // max(1, e2_part.shape[0] * e2_part.shape[1]))
        if rows >= e1_part.shape[0]:
            return self._pair_block(e1_part, e2_part)
        blocks = []
        for start in range(0, e1_part.shape[0], rows):
            e1_rows = e1_part[start : start + rows]
            if torch.is_grad_enabled():
                block = checkpoint(self._pair_block, e1_rows, e2_part, use_reentrant=False)
            else:
                block = self._pair_block(e1_rows, e2_part)
            blocks.append(block)
        return torch.cat(blocks)

    def _pair_block(self, e1_part: torch.Tensor, e2_part: torch.Tensor) -> torch.Tensor:
        """(rows, hidden), (B2, hidden) -> logits (rows, B2)."""
        hidden = F.relu(e1_part[:, None, :] + e2_part[None, :, :])
        return self.output(self.dropout(hidden)).squeeze(-1)


class CosineCoincidenceHead(nn.Module):
    """p_AA or p_AV as a similarity (not in the paper): logit = s cos(e1, e2) + b, with a learned
    scale s (kept as log s) and bias b, the head of SigLIP (Zhai et al. 2023), whose sigmoid loss
    over all pairs of a batch is the paper's equation 1 up to its weighting.

    The paper's MLP on [e1, e2] may decide coincidence from any function of the two embeddings;
    this head decides it from their cosine alone, so training shapes the geometry that QbE and
    clustering read (cosine between embeddings of f, or of f and g). The bias starts at 0, not
    at SigLIP's -10: equation 1 weighs the positives and the negatives of a batch equally (SigLIP
    sums over 32k negatives per positive), so even odds is the right prior, and a bias of -10
    would cap every positive below p = 0.5 for thousands of Adam steps (about lr per step).
    """

    def __init__(self, init_scale: float = 10.0, init_bias: float = 0.0) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def forward(self, e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
        """Aligned pairs: e1, e2 `(batch, d)` -> coincidence logits `(batch,)`."""
        cosine = (F.normalize(e1, dim=-1) * F.normalize(e2, dim=-1)).sum(-1)
        return self.log_scale.exp() * cosine + self.bias

    def pairwise_logits(
        self, e1: torch.Tensor, e2: torch.Tensor, max_elements: int = 2**28
    ) -> torch.Tensor:
        """All pairs: e1 `(B1, d)`, e2 `(B2, d)` -> logits `(B1, B2)` (one matrix product; the
        (B1, B2) logits are the largest tensor, so `max_elements` has nothing to bound)."""
        cosine = F.normalize(e1, dim=-1) @ F.normalize(e2, dim=-1).T
        return self.log_scale.exp() * cosine + self.bias


COINCIDENCE_HEADS = ("mlp", "cosine")


def build_coincidence_head(
    kind: str, embed_dim: int, hidden: int, dropout: float
) -> CoincidenceHead | CosineCoincidenceHead:
    """p_AA / p_AV of `model.coincidence_head`: "mlp" (the paper's) or "cosine"."""
    if kind == "mlp":
        return CoincidenceHead(embed_dim, hidden, dropout)
    if kind == "cosine":
        return CosineCoincidenceHead()
    raise UserError(
        f"model.coincidence_head is {kind!r}; use one of {', '.join(COINCIDENCE_HEADS)}."
    )


class ClusterHead(nn.Module):
    """p_clust: one fully connected layer with K outputs. Following the paper, "length normalizing
    both input embeddings and layer weights for each output logit and introduce a fixed logit
    scaling factor of 60 before applying the softmax".

    Weights start random (cold start, no k-means). K may reach 1,000,000: the layer holds a
    (K, d) weight, a normalised copy of it and the (batch, K) logits, nothing larger.
    """

    def __init__(self, embed_dim: int = 128, num_clusters: int = 1000, scale: float = 60.0) -> None:
        super().__init__()
        if num_clusters < 2:
            raise UserError(f"The number of clusters K must be at least 2, got {num_clusters}.")
        self.num_clusters = num_clusters
        self.scale = scale
        self.weight = nn.Parameter(torch.randn(num_clusters, embed_dim))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Embeddings `(batch, d)` -> logits `(batch, K)` = 60 * cosine, in [-60, 60].

        Computed in float32 even under autocast: bf16 keeps about 3 significant digits, and the
        scale of 60 turns that rounding of the cosine into logit errors up to about 0.08 (d =
        128). Training on CUDA allows TF32 for this product (`coincide.train.optim.tune_device`:
        errors up to about 0.009): at K = 1M, B = 512 the head and loss went from 17.9 to 11.3
        ms per step on an H200 (benchmarks/cluster_loss.py).
        """
        # float64 stays float64 (tests); anything narrower becomes float32.
        dtype = torch.promote_types(embeddings.dtype, torch.float32)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            # Normalising the (K, d) weight is cheaper than rescaling the (batch, K) logits
            # whenever batch > d, and it is the same number.
            unit_weight = F.normalize(self.weight.to(dtype), dim=1)
            unit_embeddings = F.normalize(embeddings.to(dtype), dim=-1)
            return (self.scale * unit_embeddings) @ unit_weight.T

    def probs(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Embeddings `(batch, d)` -> cluster assignment probabilities `(batch, K)`."""
        return torch.softmax(self(embeddings), dim=-1)


class ClassifierHead(nn.Module):
    """p_class: C outputs on the embedding, softmax (mutually exclusive classes) or one sigmoid
    per class (multi-label). `hidden` > 0 inserts one ReLU layer of that width (the paper's
    shallow classifier evaluation uses 512)."""

    def __init__(
        self, embed_dim: int, num_classes: int, multilabel: bool = False, hidden: int = 0
    ) -> None:
        super().__init__()
        if num_classes < 1 or hidden < 0:
            raise UserError(
                f"Classifier head needs num_classes >= 1 and hidden >= 0 "
                f"(got {num_classes} and {hidden})."
            )
        self.multilabel = multilabel
        layers: list[nn.Module] = []
        width = embed_dim
        if hidden > 0:
            layers += [nn.Linear(embed_dim, hidden), nn.ReLU(inplace=True)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Embeddings `(batch, d)` -> class logits `(batch, C)`."""
        return self.layers(embeddings)

    def probs(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Embeddings `(batch, d)` -> class scores `(batch, C)` (softmax, or sigmoid per class)."""
        logits = self(embeddings)
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=-1)
