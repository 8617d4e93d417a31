"""The clustering head and L_clust at the paper's scale: time per step, before and after fusing.

    .venv/bin/python benchmarks/cluster_loss.py [--device auto|cpu|cuda] [--batch 512]
        [--clusters 1000000] [--dim 128] [--steps N] [--no-compile]

One training step of p_clust and L_clust (paper 3.2): cosine logits of B embeddings against K
unit-normalised cluster weights at scale 60, the loss, and the backward pass into the
embeddings and the weights; nothing else. Variants, all in one run on the same inputs:

- `two softmaxes, fp32` (the reference): the loss as coincide first computed it, the batch
  marginal from one softmax and the point entropies from a second log-softmax, head in float32;
- `one softmax, eager, fp32`: `coincide.losses.cluster_terms`;
- `one softmax, compiled, fp32`: `fused_cluster_terms` (torch.compile: Inductor fuses the
  softmax, entropies and column mean, forward and backward);
- `one softmax, compiled, tf32`: the same with TF32 matrix products, what training on CUDA
  runs (`coincide.train.optim.tune_device`);
- `head + loss compiled, tf32`: head and loss in one torch.compile region, as a whole-step
  compile (`optim.compile`) runs them;
- `head only, tf32`: logits and a plain sum, no loss: the floor the loss work sits on.

Prints the median milliseconds per step (CUDA events on a GPU, wall clock on CPU), each
variant's speed as a ratio against the reference measured in the same run, and how far each
variant's loss and weight gradient are from the reference (relative). At B = 512, K = 1M the
logits alone are 2.1 GB in float32, so the loss is bound by passes over memory, and the head's
three matrix products are 0.4 TFLOP. Last, how far TF32 and bf16 rounding of the unit
vectors moves the logits (emulated against float64), the cost of the TF32 products.

`--profile N` then runs N steps of the variant training runs (compiled where compiling is
on, TF32 on CUDA) under torch.profiler and prints the kernels that took the most device time
(CPU time on CPU): where the milliseconds of the head and loss go.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from coincide.losses import ClusterLoss, cluster_terms, fused_cluster_terms
from coincide.models.heads import ClusterHead

GAMMA = 1.1


def two_softmax_loss(logits: torch.Tensor) -> torch.Tensor:
    """L_clust as first written: marginal and point entropies from separate softmaxes."""
    logits = logits.float()
    marginal = torch.softmax(logits, dim=-1).mean(0)
    log_probs = F.log_softmax(logits, dim=-1)
    point = -(log_probs.exp() * log_probs).sum(-1).mean()
    tiny = torch.finfo(marginal.dtype).tiny
    return point + GAMMA * (marginal * marginal.clamp_min(tiny).log()).sum()


def one_softmax_loss(compile: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    loss = ClusterLoss(GAMMA)

    def run(logits: torch.Tensor) -> torch.Tensor:
        terms = fused_cluster_terms(logits, compile=True) if compile else cluster_terms(logits)
        return loss.from_terms(*terms)

    return run


def head_only(logits: torch.Tensor) -> torch.Tensor:
    return logits.sum() * 1e-9


Forward = Callable[[ClusterHead, torch.Tensor], torch.Tensor]  # (head, embeddings) -> loss


def on_logits(loss_of: Callable[[torch.Tensor], torch.Tensor]) -> Forward:
    """The head as coincide runs it (eager), then `loss_of` on its logits."""
    return lambda head, embeddings: loss_of(head(embeddings))


def compiled_together() -> Forward:
    """Head and L_clust in one torch.compile region: what a whole-step compile
    (`optim.compile`) lets Inductor fuse (the weights' normalisation with its backward, the
    loss with the product's output)."""
    loss = ClusterLoss(GAMMA)
    return torch.compile(lambda head, embeddings: loss(head(embeddings)), dynamic=False)


def step(head: ClusterHead, embeddings: torch.Tensor, forward: Forward) -> torch.Tensor:
    head.weight.grad = None
    embeddings.grad = None
    loss = forward(head, embeddings)
    loss.backward()
    return loss.detach()


def round_mantissa(x: torch.Tensor, bits: int) -> torch.Tensor:
    """float32 `x` rounded to `bits` mantissa bits (TF32 keeps 10, bf16 7), to nearest."""
    drop = 23 - bits
    as_int = x.contiguous().view(torch.int32)
    return ((as_int + (1 << (drop - 1))) & ~((1 << drop) - 1)).view(torch.float32)


@torch.no_grad()
def rounding_error(
    head: ClusterHead, embeddings: torch.Tensor, bits: int, clusters: int = 100_000
) -> tuple[float, float]:
    """(rms, max) error of the head's logits (60 x cosine) when its unit vectors are rounded to
    `bits` mantissa bits before the product, against float64; over the first `clusters`
    clusters. Emulated, so it runs on any device."""
    unit_w = F.normalize(head.weight[:clusters].float(), dim=1)
    unit_e = F.normalize(embeddings.float(), dim=1)
    exact = head.scale * (unit_e.double() @ unit_w.double().T)
    rounded = head.scale * (round_mantissa(unit_e, bits) @ round_mantissa(unit_w, bits).T)
    error = rounded.double() - exact
    return float(error.pow(2).mean().sqrt()), float(error.abs().max())


def timed(device: torch.device, work: Callable[[], object], steps: int) -> list[float]:
    """Milliseconds of each of `steps` calls (CUDA events on a GPU)."""
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            work()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        else:
            started = time.perf_counter()
            work()
            times.append((time.perf_counter() - started) * 1e3)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--steps", type=int, default=None, help="Timed steps (30 GPU, 5 CPU).")
    parser.add_argument("--no-compile", action="store_true", help="Skip the compiled variants.")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="Profile N steps; print top kernels."
    )
    args = parser.parse_args(argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    steps = args.steps or (30 if device.type == "cuda" else 5)
    torch.manual_seed(0)
    head = ClusterHead(args.dim, args.clusters).to(device)
    embeddings = torch.randn(args.batch, args.dim, device=device, requires_grad=True)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(
        f"device {name}, torch {torch.__version__}; B = {args.batch}, K = {args.clusters:,}, "
        f"d = {args.dim}; logits {args.batch * args.clusters * 4 / 1e9:.2f} GB in float32"
    )

    # (label, forward, TF32 products, has the loss)
    variants: list[tuple[str, Forward, bool, bool]] = [
        ("two softmaxes, fp32 (reference)", on_logits(two_softmax_loss), False, True),
        ("one softmax, eager, fp32", on_logits(one_softmax_loss(False)), False, True),
    ]
    if not args.no_compile:
        variants += [
            ("one softmax, compiled, fp32", on_logits(one_softmax_loss(True)), False, True),
            ("one softmax, compiled, tf32", on_logits(one_softmax_loss(True)), True, True),
            ("head + loss compiled, tf32", compiled_together(), True, True),
        ]
    tf32_name = ", tf32" if device.type == "cuda" else ""
    variants.append((f"head only{tf32_name}", on_logits(head_only), True, False))

    rows = []
    reference: tuple[float, torch.Tensor] | None = None
    for label, forward, tf32, has_loss in variants:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        started = time.perf_counter()
        loss = step(head, embeddings, forward)  # warm-up (and compilation)
        if device.type == "cuda":
            torch.cuda.synchronize()
        first_s = time.perf_counter() - started
        work = functools.partial(step, head, embeddings, forward)
        timed(device, work, 2)
        grad = head.weight.grad.detach().clone()
        ms = statistics.median(timed(device, work, steps))
        if reference is None:
            reference = (float(loss), grad)
        if not has_loss:
            loss_err = grad_err = float("nan")
        else:
            loss_err = abs(float(loss) - reference[0]) / abs(reference[0])
            grad_err = float((grad - reference[1]).norm() / reference[1].norm())
        rows.append((label, ms, first_s, loss_err, grad_err))
        del grad
    torch.backends.cuda.matmul.allow_tf32 = False

    base = rows[0][1]
    print(
        f"{'variant':34s} {'ms/step':>9s} {'speed vs ref':>12s} {'first call s':>12s} "
        f"{'loss rel err':>12s} {'grad rel err':>12s}"
    )
    for label, ms, first_s, loss_err, grad_err in rows:
        print(
            f"{label:34s} {ms:9.2f} {base / ms:11.2f}x {first_s:12.1f} "
            f"{loss_err:12.1e} {grad_err:12.1e}"
        )
    for name, bits in (("TF32", 10), ("bf16", 7)):
        rms, worst = rounding_error(head, embeddings.detach(), bits)
        print(
            f"logits with {name}-rounded inputs (emulated, first 100,000 clusters): "
            f"error {rms:.4f} rms, {worst:.4f} max"
        )
    if args.profile > 0:
        training = on_logits(one_softmax_loss(not args.no_compile))
        print(profile(device, functools.partial(step, head, embeddings, training), args.profile))
    return 0


def profile(device: torch.device, work: Callable[[], object], steps: int, rows: int = 15) -> str:
    """torch.profiler table of the `rows` operators and kernels with the most self time over
    `steps` calls of `work` (device time on CUDA, with TF32 products as in training)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    torch.backends.cuda.matmul.allow_tf32 = device.type == "cuda"
    work()  # warm-up outside the profile
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profiler(activities=activities) as prof:
        for _ in range(steps):
            work()
        if device.type == "cuda":
            torch.cuda.synchronize()
    torch.backends.cuda.matmul.allow_tf32 = False
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    title = f"profile of {steps} training steps (head + L_clust + backward), top {rows} by {key}"
    table = prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60)
    return f"{title}\n{table}"


if __name__ == "__main__":
    sys.exit(main())
