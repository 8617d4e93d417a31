"""The skewed class prior of the benchmark: Zipf-like, p_k proportional to 1 / rank(k)^exponent.

Real data is skewed, and that skew is what makes random labeling waste budget on the head classes
while cluster labeling can still reach the tail (paper section 3.3).
"""

from __future__ import annotations

import numpy as np


def zipf_prior(
    n_classes: int, exponent: float, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The class prior and the rank of each class.

    The ranking is a random permutation drawn from `rng` (so which class is frequent is not tied
    to the label order), or the class order itself when `rng` is None.

    Returns:
        prior: (n_classes,) float64 summing to 1,
            prior[k] = rank[k]^-exponent / sum_j rank[j]^-exponent.
        rank: (n_classes,) int64, the 1-based rank of each class (1 = most frequent).
    """
    if n_classes < 1:
        raise ValueError(f"a prior needs at least one class, got {n_classes}")
    if exponent < 0:
        raise ValueError(f"the Zipf exponent must be >= 0, got {exponent}")
    order = np.arange(n_classes) if rng is None else rng.permutation(n_classes)
    rank = np.empty(n_classes, dtype=np.int64)
    rank[order] = np.arange(1, n_classes + 1)
    weights = rank.astype(np.float64) ** -exponent
    return weights / weights.sum(), rank


def sample_classes(prior: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw `n` class indices i.i.d. from `prior` (n_classes,); returns (n,) int64."""
    return rng.choice(len(prior), size=n, p=prior).astype(np.int64)
