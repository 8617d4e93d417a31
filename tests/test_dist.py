"""Two gloo processes on CPU reproduce the single-process losses and gradients.

Each rank holds half of a global batch of B coinciding pairs. It gathers the second members of
every rank (with gradient) for the all-pairs coincidence loss and all-reduces the cluster
marginal (with gradient). DistributedDataParallel averages parameter gradients over ranks; the
workers do that average explicitly. The mean of the per-rank losses and the averaged gradients
must equal the loss and gradients of one process on the concatenated batch.
"""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from torch import nn

from coincide import dist
from coincide.losses import ClusterLoss, CoincidenceLoss, cluster_marginal
from coincide.models import ClusterHead, CoincidenceHead

WORLD = 2
GLOBAL_BATCH = 6
DIM_IN, DIM = 5, 4


class Model(nn.Module):
    """f, g and the heads, small enough to compare in float64."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.f = nn.Linear(DIM_IN, DIM)
        self.g = nn.Linear(DIM_IN, DIM)
        self.coincidence = CoincidenceHead(embed_dim=DIM, hidden=8)
        self.cluster = ClusterHead(embed_dim=DIM, num_clusters=3)
        self.double()


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x1 = torch.randn(GLOBAL_BATCH, DIM_IN, generator=generator, dtype=torch.float64)
    x2 = torch.randn(GLOBAL_BATCH, DIM_IN, generator=generator, dtype=torch.float64)
    return x1, x2


def losses(model: Model, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The coincidence and cluster losses of this process's pairs, as the trainer computes them."""
    e1, e2 = model.f(x1), model.g(x2)
    e2_global = dist.all_gather_with_grad(e2)
    logits = model.coincidence.pairwise_logits(e1, e2_global)
    coincidence = CoincidenceLoss()(logits, positive_offset=dist.rank() * x1.shape[0])
    cluster_logits = model.cluster(e1)
    marginal = dist.all_reduce_mean(cluster_marginal(cluster_logits))
    cluster = ClusterLoss(gamma=1.1)(cluster_logits, marginal)
    return coincidence, cluster


def gradients(model: Model, loss: torch.Tensor) -> list[torch.Tensor]:
    grads = torch.autograd.grad(
        loss, list(model.parameters()), retain_graph=True, allow_unused=True
    )
    return [
        torch.zeros_like(p) if g is None else g
        for p, g in zip(model.parameters(), grads, strict=True)
    ]


def worker(rank: int, port: int, out: Path) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
    )
    device = dist.setup("cpu")
    try:
        model = Model()
        x1, x2 = global_batch()
        local = GLOBAL_BATCH // WORLD
        mine = slice(rank * local, (rank + 1) * local)
        coincidence, cluster = losses(model, x1[mine], x2[mine])
        result = {
            "device": str(device),
            "rank": dist.rank(),
            "world": dist.world_size(),
            "main": dist.is_main(),
            "local_losses": torch.stack([coincidence, cluster]).detach(),
        }
        for name, loss in (("coincidence", coincidence), ("cluster", cluster)):
            mean_loss = dist.all_reduce_mean(loss.detach())
            grads = gradients(model, loss)
            for grad in grads:  # what DistributedDataParallel does
                torch_dist.all_reduce(grad)
                grad /= WORLD
            result[name] = (mean_loss, grads)
        torch.save(result, out / f"rank{rank}.pt")
    finally:
        dist.cleanup()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_ranks_match_one_process_on_the_concatenated_batch(tmp_path: Path) -> None:
    mp.spawn(worker, args=(free_port(), tmp_path), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    model = Model()
    coincidence, cluster = losses(model, *global_batch())  # one process: plain tensors
    for name, loss in (("coincidence", coincidence), ("cluster", cluster)):
        expected_grads = gradients(model, loss)
        assert any(g.abs().sum() > 0 for g in expected_grads)
        for result in ranks:
            mean_loss, grads = result[name]
            assert mean_loss.item() == pytest.approx(loss.item(), rel=1e-12)
            for got, expected in zip(grads, expected_grads, strict=True):
                assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)

    assert [r["rank"] for r in ranks] == [0, 1]
    assert [r["main"] for r in ranks] == [True, False]
    assert all(r["world"] == WORLD and r["device"] == "cpu" for r in ranks)
    # The halves really differ: only their mean is the global loss.
    assert not torch.allclose(ranks[0]["local_losses"], ranks[1]["local_losses"])


def test_one_process_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert dist.setup("cpu") == torch.device("cpu")
    assert not dist.is_distributed()
    assert (dist.rank(), dist.world_size(), dist.local_rank(), dist.is_main()) == (0, 1, 0, True)
    x = torch.randn(3, 2, requires_grad=True)
    assert dist.all_gather_with_grad(x) is x
    assert dist.all_reduce_mean(x) is x
    dist.barrier()
    dist.cleanup()
