"""The optimizer of a run and its learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from coincide.config.settings import OptimConfig


def build_optimizer(cfg: OptimConfig, models: nn.Module) -> torch.optim.Optimizer:
    """Adam over every parameter of the run (AdamW when weight_decay > 0).

    One optimizer serves the whole curriculum: parts a stage does not train get no gradient, and
    Adam leaves parameters without a gradient (and their moments) untouched.
    """
    params = list(models.parameters())
    # One fused kernel per step on GPU instead of a loop over tensors (same state dict).
    fused = bool(params) and all(p.is_cuda for p in params)
    if cfg.weight_decay > 0:
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.Adam(params, lr=cfg.lr, fused=fused)


def learning_rate(cfg: OptimConfig, stage_max_steps: int, stage_step: int) -> float:
    """Learning rate for the optimizer step that follows `stage_step` steps of a stage.

    Linear warmup over the stage's first `warmup_steps` (new heads join at stage starts), then
    constant or cosine decay to 0 at the stage's step cap.
    """
    scale = min(1.0, (stage_step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    if cfg.schedule == "cosine":
        scale *= 0.5 * (1.0 + math.cos(math.pi * min(1.0, stage_step / stage_max_steps)))
    return cfg.lr * scale


def tune_device(device: torch.device) -> None:
    """Backend settings for training on `device` (process-wide). On CUDA:

    - cuDNN autotuning: a stage's batch shapes are fixed, so the fastest convolution algorithms
      are picked once and reused for every step (the held-out batches add one more shape).
    - TF32 tensor cores for the float32 matrix products left under bf16 autocast, chiefly the
      clustering head's (B, d) x (d, K) cosine logits: at K = 1M, B = 512 these are 0.4 TFLOP
      per step, about 8 ms in plain float32 on an H200. TF32 keeps 10 mantissa bits; on unit
      vectors of d = 128 at the logit scale 60 that moves logits by 0.0015 rms, 0.009 at most,
      where bf16 would move them by 0.012 rms, 0.076 at most (benchmarks/cluster_loss.py:
      emulated rounding against float64, random vectors, B = 512, 100,000 clusters).
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
