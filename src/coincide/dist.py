"""Devices, precision and process groups: where and how coincide computes, decided here once.

`default_device`/`resolve_device` pick the device of a command (`setup` that of a training
process), `amp_dtype` and `Precision` the autocast decision of training and inference (bf16 on a
GPU, float32 on a CPU, unless `optim.amp` says otherwise), and the process-group helpers fall
back to one process.

The same code runs as `coincide train ...` (one process: every helper is the identity), as
`coincide train ... --nproc N` (`coincide.train.launch`) and as `torchrun --nproc-per-node N -m
coincide.cli train ...` (`setup` joins the group the launcher describes in the environment:
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

Gradient convention of the two collectives with gradient: each is the exact adjoint of its
forward summed over ranks, i.e. backward propagates the gradient of sum_r L_r (the sum of every
rank's loss). DistributedDataParallel then divides parameter gradients by the world size, so the
model follows the gradient of mean_r L_r, which the losses in `coincide.losses` define to equal
the loss on the global batch.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from coincide.errors import UserError


def default_device() -> torch.device:
    """The device to compute on when none is named: the first CUDA GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(name: str | torch.device | None) -> torch.device:
    """`"auto"` / None -> `default_device()`; otherwise the named device (UserError when absent)."""
    if name is None or name == "auto":
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError as err:
        visible = "cuda" if torch.cuda.is_available() else "no GPU is visible"
        raise UserError(
            f"--device {name} is not a device name; use auto, cpu or cuda ({visible})."
        ) from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asks for a GPU but none is visible; use --device cpu.")
    return device


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a setting (`optim.amp`, finetune's `amp`): bf16 for "bf16", and
    for "auto" on a GPU; None (plain float32) otherwise."""
    return torch.bfloat16 if amp == "bf16" or (amp == "auto" and device.type == "cuda") else None


def autocast_context(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[object]:
    """Autocast to `dtype` on `device` (bf16 on a GPU), or nothing when `dtype` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def inference_autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """The precision of inference, as training's default: bf16 on a GPU, float32 on a CPU."""
    return autocast_context(device, amp_dtype("auto", device))


@dataclass(frozen=True)
class Precision:
    """How a training process computes: its autocast dtype and whether convolutions take
    channels_last tensors (on a GPU only, when `optim.channels_last` asks for it)."""

    device: torch.device
    dtype: torch.dtype | None
    channels_last: bool

    @classmethod
    def for_training(cls, amp: str, channels_last: bool, device: torch.device) -> Precision:
        cuda = device.type == "cuda"
        return cls(device, amp_dtype(amp, device), cuda and channels_last)

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        return autocast_context(self.device, self.dtype)

    @property
    def name(self) -> str:
        return "bf16 autocast" if self.dtype is not None else "fp32"


def is_distributed() -> bool:
    """True inside an initialised process group."""
    return torch_dist.is_available() and torch_dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return torch_dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return torch_dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's rank on its node, as torchrun sets it (0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on the one process that logs and writes (rank 0)."""
    return rank() == 0


def setup(device: str = "auto") -> torch.device:
    """Join torchrun's process group if WORLD_SIZE > 1 and return the device to compute on.

    device: "auto" (CUDA when available, else CPU), "cuda" or "cpu". Under torchrun with CUDA
    each process takes GPU LOCAL_RANK and the backend is NCCL; on CPU it is gloo.
    """
    if device not in ("auto", "cuda", "cpu"):
        raise UserError(f"Device '{device}' is unknown; use auto, cuda or cpu.")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise UserError(
            "Device 'cuda' was asked for but no CUDA GPU is visible; use --set device=cpu."
        )
    chosen = torch.device("cpu")
    if use_cuda:
        if local_rank() >= torch.cuda.device_count():
            raise UserError(
                f"LOCAL_RANK {local_rank()} has no GPU ({torch.cuda.device_count()} visible); "
                "start at most one process per GPU."
            )
        chosen = torch.device("cuda", local_rank())
        torch.cuda.set_device(chosen)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        if use_cuda:
            torch_dist.init_process_group(backend="nccl", device_id=chosen)
        else:
            torch_dist.init_process_group(backend="gloo")
    return chosen


def cleanup() -> None:
    """Leave the process group (no-op without one)."""
    if is_distributed():
        torch_dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if is_distributed():
        torch_dist.barrier()


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(torch_dist.get_world_size())]
        torch_dist.all_gather(parts, x)
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # Every rank used every rank's rows: this rank's rows receive the sum of all ranks'
        # gradients for them. (gloo has no reduce_scatter; the all-reduce is B_global x d, small.)
        grad = grad.contiguous().clone()
        torch_dist.all_reduce(grad, op=torch_dist.ReduceOp.SUM)
        start = torch_dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `(B_local, ...)` tensor in rank order -> `(world * B_local, ...)`.

    Gradient flows back to each rank's own rows (summed over the ranks that used them). All ranks
    must pass the same shape (the trainer's fixed batch size guarantees it). Without a process
    group this returns x itself.
    """
    if not is_distributed() or world_size() == 1:
        return x
    return _AllGatherWithGrad.apply(x)


class _AllReduceMean(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        mean = x.clone()
        torch_dist.all_reduce(mean, op=torch_dist.ReduceOp.SUM)
        return mean / torch_dist.get_world_size()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # Each rank's input enters every rank's output with weight 1/world.
        grad = grad.contiguous().clone()
        torch_dist.all_reduce(grad, op=torch_dist.ReduceOp.SUM)
        return grad / torch_dist.get_world_size()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of x over ranks (same shape), differentiable; x itself without a process group.

    Used for the cluster marginal of the global batch, and (detached) for logging a loss that
    means the same on every rank.
    """
    if not is_distributed() or world_size() == 1:
        return x
    return _AllReduceMean.apply(x)
