"""Each loss against a literal NumPy transcription of the paper's equation, plus known values."""

import math
import warnings

import numpy as np
import pytest
import torch

import coincide.losses
from coincide.losses import (
    ClassificationLoss,
    ClusterLoss,
    CoincidenceLoss,
    RandomNegativeCoincidenceLoss,
    TripletLoss,
    cluster_marginal,
    cluster_stats,
    cluster_terms,
    fused_cluster_terms,
    random_negative_indices,
)
from coincide.models import CoincidenceHead
from coincide.models.compiling import CompiledOrEager

torch.set_num_threads(1)


# --- literal transcriptions (loops, float64) -------------------------------------------------


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def coincidence_loss_reference(p: np.ndarray) -> float:
    """Equation 1 with p[i, j] = p_AA([f(x1_i), f(x2_j)])."""
    b = p.shape[0]
    positives = sum(math.log(p[i, i]) for i in range(b))
    negatives = sum(math.log(1.0 - p[i, j]) for i in range(b) for j in range(b) if j != i)
    return -positives / b - negatives / (b * (b - 1))


def entropy_reference(p: np.ndarray) -> float:
    return -sum(float(pk) * math.log(pk) for pk in p if pk > 0)


def cluster_loss_reference(logits: np.ndarray, gamma: float) -> float:
    b = logits.shape[0]
    probs = []
    for i in range(b):
        exp = np.exp(logits[i] - logits[i].max())
        probs.append(exp / exp.sum())
    mean_point_entropy = sum(entropy_reference(p) for p in probs) / b
    marginal = sum(probs) / b
    return mean_point_entropy - gamma * entropy_reference(marginal)


# --- coincidence -------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [2, 3, 8, 17])
def test_coincidence_loss_matches_equation_1(batch: int) -> None:
    rng = np.random.default_rng(batch)
    logits = rng.normal(0.0, 3.0, size=(batch, batch))
    p = np.vectorize(sigmoid)(logits)
    loss = CoincidenceLoss()(torch.from_numpy(logits))
    assert loss.item() == pytest.approx(coincidence_loss_reference(p), rel=1e-5)


@pytest.mark.parametrize(("batch", "dim"), [(2, 4), (3, 16), (8, 8), (17, 32)])
def test_coincidence_head_and_loss_match_equation_1_on_concatenations(batch: int, dim: int) -> None:
    torch.manual_seed(batch)
    head = CoincidenceHead(embed_dim=dim, hidden=32).double()
    e1, e2 = torch.randn(batch, dim).double(), torch.randn(batch, dim).double()
    p = np.empty((batch, batch))
    with torch.no_grad():
        for i in range(batch):
            for j in range(batch):
                z = torch.cat([e1[i], e2[j]])[None]  # the paper's z = [f(x1_i), f(x2_j)]
                p[i, j] = torch.sigmoid(head.output(torch.relu(head.hidden(z)))).item()
        loss = CoincidenceLoss()(head.pairwise_logits(e1, e2))
    assert loss.item() == pytest.approx(coincidence_loss_reference(p), rel=1e-6)


def test_coincidence_loss_of_zero_logits_is_two_log_two() -> None:
    loss = CoincidenceLoss()(torch.zeros(5, 5))
    assert loss.item() == pytest.approx(2 * math.log(2), rel=1e-6)


def test_coincidence_loss_rewards_a_separating_matrix() -> None:
    good = torch.full((4, 4), -5.0).fill_diagonal_(5.0)
    assert CoincidenceLoss()(good).item() == pytest.approx(2 * math.log1p(math.exp(-5)), rel=1e-5)
    assert CoincidenceLoss()(-good).item() == pytest.approx(2 * math.log1p(math.exp(5)), rel=1e-5)


@pytest.mark.parametrize(("world", "local"), [(2, 3), (3, 4), (4, 1)])
def test_per_rank_blocks_average_to_the_global_loss(world: int, local: int) -> None:
    """Rank r's (local, world*local) block, positive_offset = r*local; their mean is eq. 1."""
    rng = np.random.default_rng(world * 10 + local)
    logits = rng.normal(0.0, 2.0, size=(world * local, world * local))
    blocks = [
        CoincidenceLoss()(torch.from_numpy(logits[r * local : (r + 1) * local]), r * local)
        for r in range(world)
    ]
    expected = coincidence_loss_reference(np.vectorize(sigmoid)(logits))
    assert float(torch.stack(blocks).mean()) == pytest.approx(expected, rel=1e-6)


def test_coincidence_loss_rejects_positives_outside_the_matrix() -> None:
    with pytest.raises(ValueError):
        CoincidenceLoss()(torch.zeros(3, 6), positive_offset=4)


def hard_negative_loss_reference(logits: np.ndarray, beta: float, offset: int = 0) -> float:
    """The hardness-weighted loss with loops: w_ij = (B_g - 1) e^(beta l_ij) / sum_k e^(beta l_ik)
    over the row's negatives j, k != offset + i."""
    b_local, b_global = logits.shape
    positives = negatives = 0.0
    for i in range(b_local):
        others = [j for j in range(b_global) if j != offset + i]
        norm = sum(math.exp(beta * logits[i, k]) for k in others)
        positives += math.log(sigmoid(logits[i, offset + i]))
        for j in others:
            w = (b_global - 1) * math.exp(beta * logits[i, j]) / norm
            negatives += w * math.log(1.0 - sigmoid(logits[i, j]))
    return -positives / b_local - negatives / (b_local * (b_global - 1))


@pytest.mark.parametrize(("beta", "offset"), [(0.5, 0), (2.0, 0), (1.0, 3)])
def test_hard_negatives_weight_each_row_by_a_softmax_of_its_logits(beta, offset) -> None:
    rng = np.random.default_rng(int(beta * 10) + offset)
    logits = rng.normal(0.0, 2.0, size=(3, 6))
    loss = CoincidenceLoss(hardness=beta)(torch.from_numpy(logits), positive_offset=offset)
    assert loss.item() == pytest.approx(hard_negative_loss_reference(logits, beta, offset), 1e-6)


def test_hard_negatives_of_zero_are_equation_1_and_the_weights_carry_no_gradient() -> None:
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(0.0, 2.0, size=(5, 5))).requires_grad_()
    torch.testing.assert_close(CoincidenceLoss(0.0)(logits), CoincidenceLoss()(logits))
    # Equal logits: every weight is 1, so any beta gives equation 1.
    flat = torch.full((4, 4), -1.5)
    torch.testing.assert_close(CoincidenceLoss(3.0)(flat), CoincidenceLoss()(flat))
    # The gradient on a negative logit is its weight times equation 1's gradient there.
    beta = 1.5
    (plain,) = torch.autograd.grad(CoincidenceLoss()(logits), logits)
    (hard,) = torch.autograd.grad(CoincidenceLoss(beta)(logits), logits)
    with torch.no_grad():
        off = ~torch.eye(5, dtype=torch.bool)
        scores = (beta * logits).masked_fill(~off, -math.inf)
        weights = torch.softmax(scores, dim=1) * 4
    torch.testing.assert_close(hard[off], (weights * plain)[off])
    torch.testing.assert_close(hard.diagonal(), plain.diagonal())
    # The hardest negative of a row gets the most of the row's gradient.
    row = hard[0].clone()
    row[0] = 0
    assert int(row.argmax()) == int(logits[0].detach().masked_fill(~off[0], -math.inf).argmax())
    with pytest.raises(ValueError, match="hardness"):
        CoincidenceLoss(hardness=-1.0)


def test_random_negative_loss_matches_its_equation() -> None:
    rng = np.random.default_rng(0)
    positive, negative = rng.normal(0, 3, size=7), rng.normal(0, 3, size=7)
    expected = -np.mean([math.log(sigmoid(x)) for x in positive]) - np.mean(
        [math.log(1 - sigmoid(x)) for x in negative]
    )
    loss = RandomNegativeCoincidenceLoss()(torch.from_numpy(positive), torch.from_numpy(negative))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("batch", [2, 3, 8, 17])
def test_random_negative_indices_is_a_seeded_derangement(batch: int) -> None:
    draws = [random_negative_indices(batch, torch.Generator().manual_seed(s)) for s in range(20)]
    for partner in draws:
        assert sorted(partner.tolist()) == list(range(batch))
        assert all(partner[i] != i for i in range(batch))
    again = random_negative_indices(batch, torch.Generator().manual_seed(3))
    assert torch.equal(again, draws[3])
    if batch > 3:
        assert len({tuple(p.tolist()) for p in draws}) > 1


# --- clustering --------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [1.0, 1.1, 1.5])
@pytest.mark.parametrize("clusters", [2, 5, 100])
@pytest.mark.parametrize("batch", [2, 3, 8, 17])
def test_cluster_loss_matches_the_equation(batch: int, clusters: int, gamma: float) -> None:
    rng = np.random.default_rng(batch * 1000 + clusters)
    logits = rng.normal(0.0, 4.0, size=(batch, clusters))
    loss = ClusterLoss(gamma)(torch.from_numpy(logits))
    assert loss.item() == pytest.approx(cluster_loss_reference(logits, gamma), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("gamma", [1.0, 1.1, 1.5])
@pytest.mark.parametrize("clusters", [2, 5, 100])
def test_cluster_loss_of_uniform_assignments(clusters: int, gamma: float) -> None:
    loss = ClusterLoss(gamma)(torch.zeros(6, clusters))
    assert loss.item() == pytest.approx((1 - gamma) * math.log(clusters), rel=1e-5)


@pytest.mark.parametrize("gamma", [1.0, 1.1, 1.5])
@pytest.mark.parametrize("clusters", [2, 5, 100])
def test_cluster_loss_of_one_hot_assignments_spread_evenly(clusters: int, gamma: float) -> None:
    batch = 2 * clusters
    logits = torch.full((batch, clusters), -50.0)
    logits[torch.arange(batch), torch.arange(batch) % clusters] = 50.0
    loss = ClusterLoss(gamma)(logits)
    assert loss.item() == pytest.approx(-gamma * math.log(clusters), rel=1e-5)


def test_cluster_loss_of_a_collapsed_assignment_is_zero() -> None:
    logits = torch.full((8, 5), -50.0)
    logits[:, 2] = 50.0
    assert ClusterLoss(1.1)(logits).item() == pytest.approx(0.0, abs=1e-6)


def test_cluster_loss_uses_a_given_marginal() -> None:
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    marginal = torch.tensor([0.5, 0.25, 0.25])
    point_entropy = float(np.mean([entropy_reference(p) for p in logits.softmax(-1).numpy()]))
    expected = point_entropy - 1.1 * entropy_reference(marginal.numpy())
    assert ClusterLoss(1.1)(logits, marginal).item() == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(cluster_marginal(logits), logits.softmax(-1).mean(0))


def _two_softmax_cluster_loss(logits: torch.Tensor, gamma: float) -> torch.Tensor:
    """The loss as first written: the marginal and the point entropies from separate softmaxes."""
    marginal = logits.softmax(-1).mean(0)
    log_probs = logits.log_softmax(-1)
    point = -(log_probs.exp() * log_probs).sum(-1).mean()
    return point + gamma * (marginal * marginal.log()).sum()


def test_cluster_terms_give_the_loss_and_gradient_of_the_two_softmax_form() -> None:
    logits = torch.randn(9, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    logits = (logits * 5).requires_grad_()
    expected = _two_softmax_cluster_loss(logits, 1.1)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    point, marginal = cluster_terms(logits)
    loss = ClusterLoss(1.1).from_terms(point, marginal)
    (grad,) = torch.autograd.grad(loss, logits)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    assert torch.allclose(grad, expected_grad, rtol=1e-10, atol=1e-14)
    assert torch.autograd.gradcheck(
        lambda x: ClusterLoss(1.1).from_terms(*cluster_terms(x)),
        (logits.detach()[:4, :7].clone().requires_grad_(),),
    )


@pytest.fixture
def fresh_compiled_cluster_terms(monkeypatch):
    fresh = CompiledOrEager(cluster_terms, "the clustering loss", dynamic=False)
    monkeypatch.setattr(coincide.losses, "_compiled_cluster_terms", fresh)


def test_compiled_cluster_terms_match_eager(fresh_compiled_cluster_terms) -> None:
    """The path CUDA takes (torch.compile of cluster_terms), here compiled for the CPU."""
    logits = torch.randn(16, 300, generator=torch.Generator().manual_seed(4)) * 8
    eager = logits.clone().requires_grad_()
    compiled = logits.clone().requires_grad_()
    expected = ClusterLoss(1.1).from_terms(*cluster_terms(eager))
    expected.backward()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a machine without a C++ compiler falls back to eager
        loss = ClusterLoss(1.1).from_terms(*fused_cluster_terms(compiled, compile=True))
    loss.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    assert torch.allclose(compiled.grad, eager.grad, rtol=1e-4, atol=1e-7)


def test_cluster_terms_are_not_compiled_for_cpu_tensors_by_default(
    fresh_compiled_cluster_terms, monkeypatch
) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("compiled for a CPU tensor")

    monkeypatch.setattr(torch, "compile", refuse)
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(6))
    point, _ = fused_cluster_terms(logits)
    assert point.item() == pytest.approx(cluster_terms(logits)[0].item())


def test_cluster_terms_fall_back_to_eager_when_compiling_fails(
    fresh_compiled_cluster_terms, monkeypatch
) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: broken)
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(5))
    with pytest.warns(UserWarning, match="runs eager"):
        point, marginal = fused_cluster_terms(logits, compile=True)
    expected_point, expected_marginal = cluster_terms(logits)
    assert point.item() == pytest.approx(expected_point.item())
    assert torch.equal(marginal, expected_marginal)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once; later calls stay eager quietly
        fused_cluster_terms(logits, compile=True)


def test_cluster_stats_counts_active_clusters_and_marginal_entropy() -> None:
    logits = torch.full((6, 5), -50.0)
    logits[torch.arange(6), torch.tensor([0, 0, 1, 1, 3, 3])] = 50.0
    stats = cluster_stats(logits)
    assert stats.active_clusters == 3
    assert stats.marginal_entropy == pytest.approx(math.log(3), rel=1e-5)


# --- triplet and classification -----------------------------------------------------------------


def test_triplet_loss_matches_its_equation() -> None:
    rng = np.random.default_rng(1)
    anchor, positive, negative = (rng.normal(size=(9, 6)) for _ in range(3))
    margin = 0.3
    expected = 0.0
    for a, p, n in zip(anchor, positive, negative, strict=True):
        a, p, n = (v / np.linalg.norm(v) for v in (a, p, n))
        expected += max(0.0, float(np.sum((a - p) ** 2) - np.sum((a - n) ** 2)) + margin)
    expected /= 9
    loss = TripletLoss(margin)(*(torch.from_numpy(x) for x in (anchor, positive, negative)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert expected > 0


def test_softmax_classification_loss_matches_equation_3() -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, size=(7, 4))
    labels = rng.integers(0, 4, size=7)
    expected = 0.0
    for i in range(7):
        log_norm = math.log(sum(math.exp(v) for v in logits[i]))
        expected += -(logits[i, labels[i]] - log_norm)
    expected /= 7
    loss_fn = ClassificationLoss(multilabel=False)
    by_index = loss_fn(torch.from_numpy(logits), torch.from_numpy(labels))
    by_one_hot = loss_fn(torch.from_numpy(logits), torch.from_numpy(np.eye(4)[labels]))
    assert by_index.item() == pytest.approx(expected, rel=1e-6)
    assert by_one_hot.item() == pytest.approx(expected, rel=1e-6)


def test_multilabel_classification_loss_matches_equation_3() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, size=(5, 6))
    targets = (rng.random(size=(5, 6)) < 0.4).astype(np.float64)
    expected = 0.0
    for i in range(5):
        for c in range(6):
            p = sigmoid(logits[i, c])
            expected -= targets[i, c] * math.log(p) + (1 - targets[i, c]) * math.log(1 - p)
    expected /= 5
    loss = ClassificationLoss(multilabel=True)(torch.from_numpy(logits), torch.from_numpy(targets))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


# --- extreme logits -------------------------------------------------------------------------------


def _extreme(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    signs = torch.randint(0, 2, shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return (signs * 1e4).float().requires_grad_()


@pytest.mark.parametrize(
    "loss_of",
    [
        lambda x: CoincidenceLoss()(x),
        lambda x: CoincidenceLoss()(x[:3], positive_offset=3),
        lambda x: RandomNegativeCoincidenceLoss()(x[0], x[1]),
        lambda x: ClusterLoss(1.1)(x),
        lambda x: ClassificationLoss()(x, torch.arange(6) % 6),
        lambda x: ClassificationLoss(multilabel=True)(x, (torch.arange(36).view(6, 6) % 2).float()),
    ],
    ids=["all-pairs", "rank-block", "random-negative", "cluster", "softmax", "multilabel"],
)
def test_losses_have_finite_values_and_gradients_for_extreme_logits(loss_of) -> None:
    logits = _extreme((6, 6), seed=0)
    loss = loss_of(logits)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_extreme_logits_give_the_right_coincidence_loss() -> None:
    perfect = torch.full((4, 4), -1e4).fill_diagonal_(1e4)
    assert CoincidenceLoss()(perfect).item() == pytest.approx(0.0, abs=1e-6)
    assert CoincidenceLoss()(-perfect).item() == pytest.approx(2e4, rel=1e-6)
