"""Training throughput: AV pairs/s of the full joint step against the bare backbones, same run.

    .venv/bin/python benchmarks/train_throughput.py [--config small|paper|FILE] [--set k=v ...]
        [--device auto|cpu|cuda] [--steps N] [--warmup N] [--batch-size B] [--workers W]
        [--media N] [--store PATH] [--stage joint] [--threads N] [--schedule auto]

Defaults: `--config paper` on a GPU, `small` on CPU; 200 timed steps on a GPU, 20 on CPU;
one torch thread on CPU.

What is measured (issue 3, "Proof"), all in one process, one after the other:

1. The full training step of one curriculum stage (`--stage`, default `joint`: (1 - beta)
   ((1 - alpha) L_AV + alpha L_AA) + beta L_clust): the training loop's own step object,
   `coincide.train.step.TrainingStep`, so what is timed is what trains:
   batches come from a feature store through the real loader (`stage_sampler` ->
   `PairBatches` -> `batch_loader` with the configuration's `data.workers` and `data.prefetch`,
   pinned memory on CUDA), are copied to the device, and go through `StageObjective` (f on the
   anchors and AA partners in one pass, g on the AV frames, p_AV, p_AA, p_clust and their
   losses) under the loop's precision (bf16 autocast and channels_last on CUDA, fp32 on CPU,
   `optim.amp` / `optim.channels_last` as configured; torch.compile where `optim.compile` asks
   for it), then backward, the loop's per-step bookkeeping (loss sums, the finiteness flag, the
   cluster-usage watch), gradient clipping when configured, and the Adam step at `optim.lr`
   (the loop's warmup schedule changes a number, not the work). Rate: pairs per second, B pairs
   per micro-batch.
2. The backbones alone: f and g (the encoders, embedding layer included; no coincidence or
   cluster heads, no losses beyond a sum) forward + backward on random tensors already on the
   device, same precision, memory format and compilation, no data loading and no optimizer.
   f runs on the audio windows one step of the stage embeds (B anchors, plus B AA partners
   when the stage trains L_AA: 2B for `joint`, in one pass as the objective does), g on the B
   AV frames. With t_f and t_g their seconds per step, the backbone rate is
   B / (t_f + t_g) pairs/s, the best a step could reach if data loading, heads, losses and the
   optimizer cost nothing. (For a stage without L_AA, f runs on B windows and this is f and g
   each on a batch of B; with L_AA, a reference of f on B windows would put the step below any
   ratio bar by construction, since the step must embed 2B windows.)
3. The loader alone (diagnostic): a fresh loader, batches fetched and not used, after its first
   batch (worker start-up excluded). It tells whether a missed bar is data loading.

Ratio = joint pairs/s / backbone pairs/s: the share of the backbones' speed that the whole
training step keeps. The bar is >= 0.9 on CUDA. On CPU the ratio is reported without a bar: the
small configuration's backbones are cheap enough that the heads, the Adam step and the
in-process loading (`data.workers = 0`) are a visible share of the step by design, and the
machines it runs on are shared, so a CPU bar would measure the neighbours; the bar is about
keeping a GPU fed. The throughput target, >= 7,000 pairs/s on one H100, applies to `--config
paper` on CUDA with the `joint` stage.

Warm-up, outside the clocks: `--warmup` passes of f and g, and `--warmup` joint steps on one
batch read directly from the store (allocator, cuDNN algorithm choice, compilation); then the
loader is started and `workers + 1` steps are taken (every worker's first batch arrives in one
burst, being started together), so the timed steps see the loader's steady state rather than a
queue that filled while the model warmed up.

Clocks: wall time (time.perf_counter). On CUDA, torch.cuda.synchronize() before a clock starts
and before it stops, and the two sides are timed in blocks: half the backbone steps, all the
joint steps in one run (so the loader and the host's dispatch overlap the device's work as in
training), the other half of the backbone steps, so slow drift weighs on both sides alike. On
CPU, where every call is synchronous, the timed steps alternate one joint step, one pass of f
and one of g, each timed on its own: a CPU shared with other work changes speed over seconds,
and alternating step by step lets that weigh on both sides alike (blocks of 20 steps were seen
to differ by 2x on a loaded 2-core machine). On CPU torch runs one thread unless `--threads`
sets another number (both sides under the same setting): per-core figures, like
benchmarks/predict.py's, and steady on a shared machine, where threads that wait for each other
at every operation lose most of their time to the neighbours (on the loaded 2-core development
machine, 2 threads ran the small step 4x slower than 1). `--schedule blocks` or `interleaved`
picks either order on either device.

Data: by default a temporary store of synthetic features written with the store's own writer
(`StoreWriter`) in the shapes `coincide ingest` writes (64 mel x 96 frames per window, one
128 x 128 x 3 frame per window), `--media` media of 10 windows each (default: enough that the
training share left after the held-out media covers one batch); `--store PATH` reads an
existing store instead. Nothing here imports `coincide.media` (PyAV), so the script
runs on a GPU machine with torch alone.

Exits 1 when a bar that applies is missed, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from coincide.config.settings import Config, StageConfig, load_config
from coincide.data.batches import PairBatches, batch_loader, read_batch
from coincide.data.pairs import BatchSampler, WindowTable, split_media
from coincide.dist import Precision
from coincide.errors import UserError
from coincide.models.compiling import compiles_on
from coincide.store.features import FeatureStore, open_store
from coincide.store.writer import MediaRecord, StoreWriter
from coincide.train.checkpoint import build_models
from coincide.train.objective import stage_parts
from coincide.train.optim import build_optimizer, tune_device
from coincide.train.step import TrainingStep
from coincide.train.triplets import stage_sampler

MIN_RATIO_GPU = 0.9
TARGET_PAIRS_PER_S_H100 = 7000.0
# The shapes `coincide ingest` writes (coincide.media.frontend.frontend_parameters; a test keeps
# them in step). Not imported from there: coincide.media needs PyAV, which a GPU box for
# training may lack.
N_MELS = 64
WINDOW_FRAMES = 96
FRAME_SIZE = 128
WINDOWS_PER_MEDIA = 10
SCHEDULES = ("auto", "blocks", "interleaved")
DEFAULT_STEPS = {"cpu": 20, "cuda": 200}
DEFAULT_WARMUP = {"cpu": 2, "cuda": 20}


@dataclass
class Figures:
    """What one run measured. Rates are per second; seconds are totals over the timed steps."""

    device: str
    torch_version: str
    threads: int
    config: str
    stage: str
    weights: dict[str, float]
    batch_size: int
    grad_accum: int
    clusters: int
    workers: int
    precision: str
    channels_last: bool
    compiled: bool
    store: str
    steps: int
    joint_s: float
    joint_pairs_per_s: float
    audio_batch: int
    image_batch: int
    audio_s_per_step: float
    image_s_per_step: float
    backbone_pairs_per_s: float
    loader_pairs_per_s: float
    ratio: float
    final_loss: float

    @property
    def audio_windows_per_s(self) -> float:
        return self.audio_batch / self.audio_s_per_step

    @property
    def image_frames_per_s(self) -> float:
        return self.image_batch / self.image_s_per_step if self.image_batch else math.nan


# ---------------------------------------------------------------------------------------------
# Setup


def resolve_device(name: str) -> torch.device:
    """auto -> CUDA when visible, else CPU; cuda without a GPU is a UserError."""
    if name not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device {name} is unknown; use auto, cpu or cuda.")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asks for a GPU but none is visible; use --device cpu.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def default_media(batch_size: int, val_fraction: float) -> int:
    """Media for a synthetic store whose training share (after `split_media` holds out
    max(2, round(val_fraction * n)) media) still covers one batch of distinct media."""
    return math.ceil((batch_size + 2) / (1.0 - val_fraction)) + 1


def write_synthetic_store(root: Path, media: int, seed: int = 0) -> Path:
    """A feature store of `media` media of WINDOWS_PER_MEDIA windows, each window with a frame.

    logmel: standard normal (n, 64, 96) float32; frames: uniform uint8 (n, 128, 128, 3); window
    starts 0, 1, 2, ... s. Speed does not depend on the values.
    """
    rng = np.random.default_rng(seed)
    frontend = {
        "n_mels": N_MELS,
        "window_frames": WINDOW_FRAMES,
        "frame_size": FRAME_SIZE,
        "synthetic": "benchmarks/train_throughput.py",
    }
    n = WINDOWS_PER_MEDIA
    with StoreWriter(root, frontend) as writer:
        for m in range(media):
            writer.add(
                MediaRecord(
                    media_id=f"synthetic{m:06d}",
                    media_path=f"/synthetic/{m:06d}.mp4",
                    size=0,
                    mtime_ns=0,
                    duration_s=float(n),
                    logmel=rng.standard_normal((n, N_MELS, WINDOW_FRAMES), dtype=np.float32),
                    frames=rng.integers(0, 256, (n, FRAME_SIZE, FRAME_SIZE, 3), dtype=np.uint8),
                    has_frame=np.ones(n, dtype=bool),
                    time_s=np.arange(n, dtype=np.float64),
                )
            )
    return root


def find_stage(cfg: Config, name: str) -> StageConfig:
    """The stage called `name` in the configuration's curricula (after --set overrides)."""
    stages = [*cfg.curriculum.stages, *cfg.curriculum.audio_only_stages]
    for stage in stages:
        if stage.name == name:
            return stage
    names = ", ".join(dict.fromkeys(s.name for s in stages))
    raise UserError(f"--stage {name} is not a stage of the configuration; use one of {names}.")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, work: Callable[[], None]) -> float:
    """Wall seconds of `work`, device work included."""
    _sync(device)
    started = time.perf_counter()
    work()
    _sync(device)
    return time.perf_counter() - started


# ---------------------------------------------------------------------------------------------
# The joint step, as coincide.train.loop runs it


class JointStep:
    """The training loop's own step (`coincide.train.step.TrainingStep`: batches to the device,
    autocast forward, backward per micro-batch, loss sums, finiteness flag, cluster watch,
    clipping, the optimizer step) at `optim.lr`, counted; without the loop's logging, held-out
    evaluation and checkpoints, which run every hundreds of steps."""

    def __init__(
        self, cfg: Config, stage: StageConfig, models: nn.ModuleDict, precision: Precision
    ) -> None:
        self.cfg = cfg
        optimizer = build_optimizer(cfg.optim, models)
        self.step = TrainingStep(
            cfg,
            stage,
            models,
            optimizer,
            precision.device,
            precision.autocast,
            channels_last=precision.channels_last,
        )
        self.objective, self.device = self.step.objective, precision.device
        self.objective_name = stage.name
        self.steps = 0

    def __call__(self, batches: Iterator[dict[str, torch.Tensor]]) -> None:
        self.step(batches, self.cfg.optim.lr, self.steps)
        self.steps += 1

    def take(self, batches: Iterator[dict[str, torch.Tensor]], steps: int) -> None:
        """`steps` steps on batches from `batches`."""
        for _ in range(steps):
            self(batches)

    def reset(self) -> None:
        """Forget the loss sums, the finiteness flag and step count of the warm-up."""
        for value in self.step.sums.values():
            value.zero_()
        self.step.bad_step.fill_(-1)
        self.steps = 0

    def mean_loss(self) -> float:
        """Mean total loss over the steps taken (NaN when any step's loss was not finite)."""
        if int(self.step.bad_step) >= 0:
            return math.nan
        return float(self.step.sums["total"]) / max(1, self.steps)


def _repeat(batch: dict[str, torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
    while True:
        yield batch


def _loader(
    cfg: Config, store: FeatureStore, sampler: BatchSampler, start: int, pin: bool
) -> Iterator[dict[str, torch.Tensor]]:
    loader = batch_loader(
        PairBatches(store, sampler, start),
        workers=cfg.data.workers,
        prefetch=cfg.data.prefetch,
        pin_memory=pin,
    )
    return iter(loader)


# ---------------------------------------------------------------------------------------------
# The backbones alone


class Backbones:
    """f and g forward + backward on random device tensors; seconds per step of each."""

    def __init__(
        self, models: nn.ModuleDict, audio_batch: int, image_batch: int, precision: Precision
    ) -> None:
        self.precision, self.device = precision, precision.device
        self.models = models
        memory = torch.channels_last if precision.channels_last else torch.contiguous_format
        device = self.device
        self.f: nn.Module = models["audio"]
        self.g: nn.Module | None = models["image"] if image_batch else None
        self.audio = torch.randn(audio_batch, 1, N_MELS, WINDOW_FRAMES, device=device)
        self.audio = self.audio.contiguous(memory_format=memory)
        self.images = torch.rand(image_batch, 3, FRAME_SIZE, FRAME_SIZE, device=device)
        self.images = self.images.contiguous(memory_format=memory)
        self.audio_s = self.image_s = 0.0
        self.steps = 0

    def compile(self) -> None:
        # Static shapes: f and g share Encoder.forward, and TorchDynamo's default would compile
        # the second one it sees for any batch size (a slower, dynamic-shape graph).
        self.f = torch.compile(self.f, dynamic=False)
        if self.g is not None:
            self.g = torch.compile(self.g, dynamic=False)

    def _pass(self, net: nn.Module, x: torch.Tensor) -> None:
        with self.precision.autocast():
            out = net(x)
        out.float().sum().backward()
        self.models.zero_grad(set_to_none=True)

    def warm(self, steps: int) -> None:
        for _ in range(steps):
            self._pass(self.f, self.audio)
            if self.g is not None:
                self._pass(self.g, self.images)

    def time(self, steps: int) -> None:
        """Add `steps` timed passes of f, then `steps` of g, to the totals."""
        passes = functools.partial(self._passes, steps=steps)
        self.audio_s += _timed(self.device, functools.partial(passes, self.f, self.audio))
        if self.g is not None:
            self.image_s += _timed(self.device, functools.partial(passes, self.g, self.images))
        self.steps += steps

    def _passes(self, net: nn.Module, x: torch.Tensor, steps: int) -> None:
        for _ in range(steps):
            self._pass(net, x)


# ---------------------------------------------------------------------------------------------
# The benchmark


def measure(
    cfg: Config,
    config_name: str,
    store_path: Path,
    stage_name: str,
    device: torch.device,
    steps: int,
    warmup: int,
    console: Console,
    schedule: str = "auto",
) -> Figures:
    """Run the three measurements of the module docstring on the store at `store_path`."""
    if steps < 2 or warmup < 0:
        raise UserError(f"--steps {steps} / --warmup {warmup}: use at least 2 steps, warmup >= 0.")
    if schedule not in SCHEDULES:
        raise UserError(f"--schedule {schedule} is unknown; use one of {', '.join(SCHEDULES)}.")
    stage = find_stage(cfg, stage_name)
    precision = Precision.for_training(cfg.optim.amp, cfg.optim.channels_last, device)
    tune_device(device)  # as the loop does (cuDNN autotuning on CUDA)
    store = open_store(store_path)
    if len(store) == 0:
        raise UserError(f"store {store_path} holds no windows; give a store with media in it.")
    table = WindowTable(store.index)
    train_media, _ = split_media(table, cfg.eval.val_fraction, cfg.seed)
    B = cfg.data.batch_size

    torch.manual_seed(cfg.seed)
    models = build_models(cfg, stage_parts(stage)).to(device)
    if precision.channels_last:
        models.to(memory_format=torch.channels_last)
    step = JointStep(cfg, stage, models, precision)
    kinds = step.objective.kinds
    if "av" in kinds and not bool(table.has_frame.any()):
        raise UserError(f"store {store_path} has no frames, which stage '{stage.name}' needs.")
    stream = [*cfg.curriculum.stages, *cfg.curriculum.audio_only_stages].index(stage)
    sampler = stage_sampler(
        step.objective,
        table,
        store,
        cfg.data.delta_t,
        B,
        cfg.data.weighting,
        cfg.seed,
        stream=stream,
        media=train_media,
    )
    audio_batch = B * (2 if "aa" in kinds else 1)
    image_batch = B if "av" in kinds else 0
    backbones = Backbones(models, audio_batch, image_batch, precision)
    compiled = compiles_on(cfg.optim.compile, precision.device)
    if compiled:
        backbones.compile()
    console.print(f"warming up the backbones and the {stage.name} step ({warmup} steps each)")
    backbones.warm(warmup)
    step.take(_repeat(read_batch(store, sampler.batch(0))), warmup)
    if schedule == "auto":
        schedule = "blocks" if device.type == "cuda" else "interleaved"
    if schedule == "blocks":
        joint_s, final_loss = _blocks(cfg, store, sampler, step, backbones, steps, console)
    else:
        joint_s, final_loss = _interleaved(cfg, store, sampler, step, backbones, steps, console)
    console.print(f"timing the loader alone ({steps} batches)")
    loader_s = _loader_seconds(cfg, store, sampler, steps)

    pairs = B * cfg.optim.grad_accum * steps
    joint_rate = pairs / joint_s
    audio_per_step = backbones.audio_s / backbones.steps
    image_per_step = backbones.image_s / backbones.steps
    backbone_rate = B / (audio_per_step + image_per_step)
    return Figures(
        device=describe_device(device),
        torch_version=torch.__version__,
        threads=torch.get_num_threads(),
        config=config_name,
        stage=stage.name,
        weights=dict(step.objective.weights),
        batch_size=B,
        grad_accum=cfg.optim.grad_accum,
        clusters=cfg.clustering.K,
        workers=cfg.data.workers,
        precision=precision.name,
        channels_last=precision.channels_last,
        compiled=compiled,
        store=str(store_path),
        steps=steps,
        joint_s=joint_s,
        joint_pairs_per_s=joint_rate,
        audio_batch=audio_batch,
        image_batch=image_batch,
        audio_s_per_step=audio_per_step,
        image_s_per_step=image_per_step,
        backbone_pairs_per_s=backbone_rate,
        loader_pairs_per_s=B * steps / loader_s,
        ratio=joint_rate / backbone_rate,
        final_loss=final_loss,
    )


def _warm_loader(
    cfg: Config, store: FeatureStore, sampler: BatchSampler, step: JointStep
) -> Iterator[dict[str, torch.Tensor]]:
    """The timed steps' loader, past its start: one step per worker (and one more) has run on
    it, and the step's loss sums are reset."""
    batches = _loader(cfg, store, sampler, 1, pin=step.device.type == "cuda")
    step.take(batches, cfg.data.workers + 1)
    step.reset()
    return batches


def _blocks(
    cfg: Config,
    store: FeatureStore,
    sampler: BatchSampler,
    step: JointStep,
    backbones: Backbones,
    steps: int,
    console: Console,
) -> tuple[float, float]:
    """GPU schedule: half the backbone steps, the joint steps in one block (the loader in its
    steady state, device work overlapping the host's), the other half of the backbone steps.
    Returns the joint block's seconds and its mean total loss."""
    half = steps // 2
    console.print(f"timing {half} backbone steps")
    backbones.time(half)
    batches = _warm_loader(cfg, store, sampler, step)
    console.print(f"timing {steps} {step.objective_name} steps with data from the store")
    seconds = _timed(step.device, functools.partial(step.take, batches, steps))
    del batches  # stops the loader's workers before the last backbone steps
    console.print(f"timing {steps - half} more backbone steps")
    backbones.time(steps - half)
    return seconds, step.mean_loss()


def _interleaved(
    cfg: Config,
    store: FeatureStore,
    sampler: BatchSampler,
    step: JointStep,
    backbones: Backbones,
    steps: int,
    console: Console,
) -> tuple[float, float]:
    """CPU schedule: one joint step, one pass of f, one of g, in turn, each timed on its own
    (CPU work is synchronous), so the load of a shared machine, which changes over seconds,
    weighs on both sides alike. Returns the joint steps' seconds and their mean total loss."""
    batches = _warm_loader(cfg, store, sampler, step)
    console.print(f"timing {steps} {step.objective_name} steps and backbone steps, in turn")
    seconds = 0.0
    for _ in range(steps):
        seconds += _timed(step.device, functools.partial(step.take, batches, 1))
        backbones.time(1)
    del batches
    return seconds, step.mean_loss()


def _loader_seconds(cfg: Config, store: FeatureStore, sampler: BatchSampler, steps: int) -> float:
    """Seconds a fresh loader takes to hand over `steps` batches after its first one."""
    batches = _loader(cfg, store, sampler, 0, pin=False)
    next(batches)
    started = time.perf_counter()
    for _ in range(steps):
        next(batches)
    seconds = time.perf_counter() - started
    del batches
    return seconds


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} torch threads)"


def bars(figures: Figures, device: torch.device) -> tuple[list[str], list[str]]:
    """(lines describing each bar and whether it applies / was met, failures)."""
    lines, failures = [], []
    if device.type == "cuda":
        ok = figures.ratio >= MIN_RATIO_GPU
        lines.append(f"ratio {figures.ratio:.3f} vs bar >= {MIN_RATIO_GPU}: {_verdict(ok)}")
        if not ok:
            failures.append(f"ratio {figures.ratio:.3f} < {MIN_RATIO_GPU}")
    else:
        lines.append(f"ratio {figures.ratio:.3f}: no bar on CPU (see the module docstring)")
    target = f">= {TARGET_PAIRS_PER_S_H100:,.0f} pairs/s on one H100 (--config paper, joint)"
    if device.type == "cuda" and figures.config == "paper" and figures.stage == "joint":
        ok = figures.joint_pairs_per_s >= TARGET_PAIRS_PER_S_H100
        lines.append(f"target {target}: {figures.joint_pairs_per_s:,.0f}, {_verdict(ok)}")
        if not ok:
            failures.append(f"{figures.joint_pairs_per_s:,.0f} pairs/s < target")
    else:
        lines.append(f"target {target}: not checked here")
    return lines, failures


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def show(figures: Figures, console: Console) -> None:
    setup = Table(title="train throughput: setup", show_header=False)
    setup.add_column("", style="bold")
    setup.add_column("")
    terms = " + ".join(f"{w:g} L_{n}" for n, w in figures.weights.items())
    for key, value in (
        ("device", figures.device),
        ("torch", figures.torch_version),
        ("config / stage", f"{figures.config} / {figures.stage}: {terms}"),
        ("batch B / grad_accum", f"{figures.batch_size} / {figures.grad_accum}"),
        ("clusters K", f"{figures.clusters:,}"),
        ("loader workers", str(figures.workers)),
        (
            "precision",
            f"{figures.precision}, channels_last {figures.channels_last}, "
            f"compile {figures.compiled}",
        ),
        ("store", figures.store),
        ("timed steps", str(figures.steps)),
    ):
        setup.add_row(key, value)
    console.print(setup)

    results = Table(title="train throughput: results")
    results.add_column("measurement")
    results.add_column("rate", justify="right")
    results.add_column("unit")
    results.add_row(
        f"{figures.stage} step, data from the store (loader + f + g + heads + losses + Adam)",
        f"{figures.joint_pairs_per_s:,.1f}",
        "pairs/s",
    )
    results.add_row(
        f"f alone, fwd+bwd on {figures.audio_batch} windows per step",
        f"{figures.audio_windows_per_s:,.1f}",
        "windows/s",
    )
    if figures.image_batch:
        results.add_row(
            f"g alone, fwd+bwd on {figures.image_batch} frames per step",
            f"{figures.image_frames_per_s:,.1f}",
            "frames/s",
        )
    results.add_row("backbones: B / (t_f + t_g)", f"{figures.backbone_pairs_per_s:,.1f}", "pairs/s")
    results.add_row("loader alone (diagnostic)", f"{figures.loader_pairs_per_s:,.1f}", "pairs/s")
    results.add_row("ratio step / backbones", f"{figures.ratio:.3f}", "")
    console.print(results)
    console.print(f"mean total loss over the timed steps: {figures.final_loss:.4f}")


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="small, paper or a YAML file.")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="key.sub=value override."
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda.")
    parser.add_argument("--steps", type=int, default=None, help="Timed steps (200 GPU, 20 CPU).")
    parser.add_argument("--warmup", type=int, default=None, help="Untimed steps (20 GPU, 3 CPU).")
    parser.add_argument("--batch-size", type=int, default=None, help="Sets data.batch_size.")
    parser.add_argument("--workers", type=int, default=None, help="Sets data.workers.")
    parser.add_argument("--media", type=int, default=None, help="Media in the synthetic store.")
    parser.add_argument("--store", type=Path, default=None, help="Use this feature store.")
    parser.add_argument("--stage", default="joint", help="Stage of the curriculum to time.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on CPU).")
    parser.add_argument(
        "--schedule",
        default="auto",
        choices=SCHEDULES,
        help="Timing order: blocks (default on CUDA) or interleaved (default on CPU).",
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace, console: Console) -> tuple[Figures, list[str]]:
    """Resolve the configuration, build or open the store, measure, print; returns the
    figures and the bars missed."""
    device = resolve_device(args.device)
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else None)
    if threads is not None:
        torch.set_num_threads(threads)
    config_name = args.config or ("paper" if device.type == "cuda" else "small")
    overrides = [*args.overrides, f"device={device.type}"]
    if args.batch_size is not None:
        overrides.append(f"data.batch_size={args.batch_size}")
    if args.workers is not None:
        overrides.append(f"data.workers={args.workers}")
    cfg = load_config([config_name], overrides)
    steps = args.steps if args.steps is not None else DEFAULT_STEPS[device.type]
    warmup = args.warmup if args.warmup is not None else DEFAULT_WARMUP[device.type]

    with tempfile.TemporaryDirectory(prefix="coincide-train-bench-") as tmp:
        store_path = args.store
        if store_path is None:
            media = args.media or default_media(cfg.data.batch_size, cfg.eval.val_fraction)
            if media < 1:
                raise UserError(f"--media {media}: give a positive number of media.")
            store_path = Path(tmp) / "store"
            console.print(
                f"writing a synthetic store: {media} media x {WINDOWS_PER_MEDIA} windows "
                f"({N_MELS} x {WINDOW_FRAMES} log-mel, {FRAME_SIZE} x {FRAME_SIZE} x 3 frames)"
            )
            write_synthetic_store(store_path, media, cfg.seed)
        figures = measure(
            cfg, config_name, store_path, args.stage, device, steps, warmup, console, args.schedule
        )
        if args.store is None:
            figures.store = f"synthetic, {media} media x {WINDOWS_PER_MEDIA} windows (temp dir)"
    show(figures, console)
    lines, failures = bars(figures, device)
    for line in lines:
        console.print(line)
    return figures, failures


def main(argv: list[str] | None = None) -> int:
    console = Console()
    try:
        _, failures = run(parse_args(argv), console)
    except UserError as err:
        console.print(f"error: {err}")
        return 2
    if failures:
        console.print("BELOW THE BAR: " + "; ".join(failures))
        return 1
    console.print("ok: every bar that applies was met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
