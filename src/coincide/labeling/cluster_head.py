"""p_clust on frozen embeddings: how sure a clustering is of each window, and a head trained
longer on a fixed f.

- `head_assign`: the arg-max cluster of p_clust(f(x)) and its probability, from stored
  embeddings (no pass through f).
- `centroid_assign_confidence`: the same probability for a k-means clustering, from the
  cosine logits to the cluster centres scaled by the paper's fixed 60 ("length normalizing both
  input embeddings and layer weights for each output logit and introduce a fixed logit scaling
  factor of 60"), so that head and k-means confidences share one geometry.
- `train_head`: continue training p_clust with L_clust (paper equation 2: mean point entropy
  minus gamma times the entropy of the batch marginal) on the frozen embeddings of a store,
  after the curriculum. f does not move, so each step costs a (batch, K) product only.

The probabilities feed the `typical` member and the `size-uncertainty` order of
`coincide.labeling.select`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from coincide.errors import UserError
from coincide.losses import ClusterLoss
from coincide.models.heads import ClusterHead

# The paper's fixed logit scale of p_clust.
PAPER_SCALE = 60.0
# Elements of the (rows, K) logits computed at once.
_BLOCK_ELEMENTS = 1 << 24


def _row_blocks(n: int, k: int) -> range:
    rows = max(1, _BLOCK_ELEMENTS // max(1, k))
    return range(0, n, rows)


def _unit(rows: np.ndarray) -> torch.Tensor:
    return F.normalize(torch.from_numpy(np.array(rows, dtype=np.float32)), dim=1)


@torch.no_grad()
def head_assign(head: ClusterHead, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Arg-max cluster and its probability under p_clust for every row of `(n, d)`
    embeddings (memory-mapped is fine), on the head's device, in blocks that bound the
    `(rows, K)` logits.

    Returns:
        `(assignment (n,) int64, confidence (n,) float32)`.
    """
    head = head.eval()
    device = head.weight.device
    n = len(embeddings)
    assignment = np.empty(n, dtype=np.int64)
    confidence = np.empty(n, dtype=np.float32)
    step = _row_blocks(n, head.num_clusters).step
    for start in range(0, n, step):
        rows = torch.from_numpy(np.array(embeddings[start : start + step], dtype=np.float32))
        best = head.probs(rows.to(device)).max(dim=1)
        assignment[start : start + step] = best.indices.cpu().numpy()
        confidence[start : start + step] = best.values.float().cpu().numpy()
    return assignment, confidence


@torch.no_grad()
def centroid_assign_confidence(
    embeddings: np.ndarray, assignment: np.ndarray, k: int, scale: float = PAPER_SCALE
) -> np.ndarray:
    """`(n,)` float32 probability of each window's own cluster under a softmax over
    `scale` x cosine to the clusters' centres (the normalised mean of their members' unit
    embeddings; empty clusters take no part)."""
    assignment = np.asarray(assignment, dtype=np.int64)
    n, dim = embeddings.shape
    sums = torch.zeros(k, dim)
    steps = _row_blocks(n, k)
    for start in steps:
        rows = _unit(embeddings[start : start + steps.step])
        sums.index_add_(0, torch.from_numpy(assignment[start : start + steps.step]), rows)
    active = torch.from_numpy(np.bincount(assignment, minlength=k) > 0)
    centres = F.normalize(sums[active], dim=1)
    position = torch.cumsum(active.long(), 0) - 1  # cluster id -> row of `centres`
    confidence = np.empty(n, dtype=np.float32)
    for start in steps:
        rows = _unit(embeddings[start : start + steps.step])
        probs = torch.softmax(scale * rows @ centres.T, dim=1)
        own = position[torch.from_numpy(assignment[start : start + steps.step])]
        confidence[start : start + steps.step] = probs.gather(1, own[:, None])[:, 0].numpy()
    return confidence


def train_head(
    head: ClusterHead,
    embeddings: np.ndarray,
    steps: int,
    gamma: float,
    lr: float = 1e-3,
    batch_size: int = 512,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> ClusterHead:
    """Train p_clust alone with L_clust on frozen `(n, d)` embeddings, in place.

    Each step draws `batch_size` rows uniformly with replacement (seeded by (seed, step)); the
    marginal term is over that batch, as in joint training. AdamW without weight decay: the
    logits are cosines, the weights' length does not matter.

    Args:
        steps: optimizer steps; gamma: the marginal term's weight (the run's clustering.gamma).
        on_step: called with (step, loss) after each step (progress).
    """
    loss_fn = ClusterLoss(gamma)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    head.train()
    device = head.weight.device
    n = len(embeddings)
    for step in range(steps):
        rows = np.sort(np.random.default_rng([seed, step]).integers(n, size=min(batch_size, n)))
        batch = torch.from_numpy(np.array(embeddings[rows], dtype=np.float32)).to(device)
        loss = loss_fn(head(batch))
        value = float(loss.detach())
        if not math.isfinite(value):
            raise UserError(
                f"the clustering loss became {value} at step {step} of --head-steps; "
                "use fewer steps."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(step + 1, value)
    return head.eval()
