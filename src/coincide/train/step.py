"""One optimizer step of a curriculum stage, as training runs it and as the throughput benchmark
times it (benchmarks/train_throughput.py builds this same object).

A step takes `optim.grad_accum` micro-batches from the stage's loader: each is copied to the
device, goes through the stage objective under the run's precision (DDP's no_sync on all but the
last micro-batch), and its loss is divided by the number of micro-batches and backpropagated;
then the gradients are clipped when `optim.grad_clip` asks for it, the optimizer steps and the
gradients are dropped. Its bookkeeping stays on the device (no host sync per step): the loss sums
of the log interval, the held-out criterion's training-side sum, the first step whose loss was
not finite, and the cluster-usage watch of a stage with L_clust.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch.nn.parallel import DistributedDataParallel

from coincide.config.settings import Config, StageConfig
from coincide.models.compiling import CompiledOrEager, compiles_on
from coincide.train.monitor import ClusterWatch
from coincide.train.objective import StageObjective


class TrainingStep:
    """The stage's objective over the parts it trains, ready to step (see the module)."""

    def __init__(
        self,
        cfg: Config,
        stage: StageConfig,
        models: torch.nn.ModuleDict,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        autocast: Callable[[], contextlib.AbstractContextManager[object]],
        *,
        channels_last: bool = False,
        world: int = 1,
    ) -> None:
        self.cfg, self.optimizer, self.device, self.autocast = cfg, optimizer, device, autocast
        self.accum = cfg.optim.grad_accum
        objective = StageObjective(cfg, stage, models)
        objective.channels_last = channels_last
        for name, module in models.items():
            module.requires_grad_(name in objective.parts)
        objective.train()
        self.objective = objective
        model: Callable[..., dict[str, torch.Tensor]] = objective
        self.ddp: DistributedDataParallel | None = None
        if world > 1:
            device_ids = [device.index] if device.type == "cuda" else None
            model = self.ddp = DistributedDataParallel(objective, device_ids=device_ids)
        if compiles_on(cfg.optim.compile, device):
            # Static shapes: every training batch of a stage has the same size.
            model = CompiledOrEager(model, "the training step", dynamic=False)
        self.model = model
        self.trainable = [p for p in objective.parameters() if p.requires_grad]
        names = [*objective.weights, "total"]
        # Per log interval: each term's loss and the total, summed over steps.
        self.sums = {name: torch.zeros((), device=device) for name in names}
        # Since the last held-out measure: the stage criterion's training-side loss.
        self.monitored = torch.zeros((), device=device)
        self.monitored_steps = 0
        # The first global step whose loss was not finite (-1: none so far).
        self.bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self.watch = None
        if "clust" in objective.weights:
            self.watch = ClusterWatch(
                cfg.clustering.K,
                cfg.clustering.collapse_fraction,
                device,
                grace_steps=cfg.optim.warmup_steps,
            )

    def __call__(self, batches: Iterator[dict[str, torch.Tensor]], lr: float, step: int) -> None:
        """Take global step `step` (counted from 0) at learning rate `lr`, reading
        `grad_accum` batches from `batches`."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        for micro in range(self.accum):
            batch = {k: v.to(self.device, non_blocking=True) for k, v in next(batches).items()}
            # DDP: all-reduce gradients only on the last micro-batch of a step.
            sync: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
            if self.ddp is not None and micro < self.accum - 1:
                sync = self.ddp.no_sync()
            with sync:
                with self.autocast():
                    losses = self.model(batch)
                (losses["total"] / self.accum).backward()
            for name in self.sums:
                self.sums[name] += losses[name].detach().float() / self.accum
            self.monitored += self.objective.monitored_loss(losses).detach() / self.accum
            finite = torch.isfinite(losses["total"].detach())
            self.bad_step = torch.where(
                (self.bad_step < 0) & ~finite,
                torch.full_like(self.bad_step, step + 1),
                self.bad_step,
            )
            stats = self.objective.term_stats()
            if self.watch is not None and "assignments" in stats:
                self.watch.add(stats["assignments"], stats["marginal"])
        if self.cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.monitored_steps += 1

    def take_monitored(self) -> torch.Tensor:
        """The mean training-side criterion since the last call (on the device), and restart."""
        mean = self.monitored / max(1, self.monitored_steps)
        self.monitored = torch.zeros((), device=self.device)
        self.monitored_steps = 0
        return mean
