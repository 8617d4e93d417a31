"""The learning curriculum of paper 3.4, resumable (`coincide train`: `coincide.stages.train`).

One entry point for CPU, one GPU and `torchrun --nproc_per_node N coincide train ...`. The
stages of the configuration run in order (aa -> coin -> joint in `laptop`, the default; av ->
coin -> joint in `paper` and `small`; a store without frames runs the audio-only curriculum
aa -> aa_clust); each stage trains its weighted loss terms until its held-out coincidence loss
plateaus or it reaches its step cap.

RUN holds: config.yaml (the resolved configuration), state.json (finished stages, where training
is), checkpoints/last.pt (+ one stage<N>_<name>.pt per finished stage), checkpoints/best.pt with
best.json (the best held-out weights of the newest measured stage), train_log.csv, tb/
(TensorBoard) and plots/ (loss curves per stage). Running the same command again resumes from
checkpoints/last.pt: same stage, step, optimizer, plateau and batch-stream state.

Held-out media (a seeded `eval.val_fraction` of the store's media, never used for gradients) are
scored at the start of every stage and every `plateau.eval_every` steps: each term's loss and
AUC (`coincide.train.validation`). The stage objective's held-out value is the criterion of the
plateau rule and of best.pt; with `curriculum.restore_best` a stage ends by going back to its
best weights, so the next stage starts from what generalized, not from what memorized.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

from coincide import dist
from coincide.config.settings import Config, StageConfig, save_config
from coincide.data.augment import BatchAugment
from coincide.data.batches import PairBatches, batch_loader
from coincide.data.pairs import (
    BatchSampler,
    PairBatch,
    PairSampler,
    WindowTable,
    rank_share,
    split_media,
)
from coincide.dist import Precision
from coincide.errors import UserError
from coincide.run_folder import (
    BEST_CHECKPOINT,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    LAST_CHECKPOINT,
)
from coincide.store.features import FeatureStore, open_store
from coincide.train.checkpoint import build_models, load_resumable, read_best_info, save_checkpoint
from coincide.train.guards import check_store_finite, non_finite_error, non_finite_step
from coincide.train.init_from import start_audio_from
from coincide.train.monitor import ClusterWatch, Monitor, Throughput
from coincide.train.neighbours import refresh_neighbours
from coincide.train.objective import StageObjective, stage_parts
from coincide.train.optim import build_optimizer, learning_rate, tune_device
from coincide.train.plateau import Plateau
from coincide.train.position import (
    Position,
    TrainingState,
    check_resumable,
    check_stages,
    checkpoint_payload,
    restore_best,
    resume,
    reweighted_stages,
    save_best,
    write_state,
)
from coincide.train.report import (
    curriculum_line,
    finite_or_none,
    plot_stage,
    resume_line,
    stage_summaries,
    weights_text,
)
from coincide.train.step import TrainingStep

# A stage with the label-triplet term (Table 1 row a) trains on label-triplet batches; every
# other stage on coincidence pairs.
from coincide.train.triplets import stage_batch_size, stage_sampler, stage_validation_batches
from coincide.train.validation import (
    HeldOut,
    Overfitting,
    evaluate_held_out,
    overfitting_message,
)


class Probe(Protocol):
    """A measure of the audio encoder during training: `probe(encoder, step)` records a figure
    of `encoder` at training step `step` and returns it (higher is better)."""

    def __call__(self, encoder: torch.nn.Module, step: int) -> float: ...


class ProbeFactory(Protocol):
    """Builds the run's probe once its folder and TensorBoard writer exist (rank 0 only).
    `coincide.stages.train` gives one that measures held-out QbE
    (`coincide.evaluation.probe.TrainingProbe`); the loop does not import evaluation."""

    def __call__(self, run_dir: Path, *, seed: int, writer: Any) -> Probe: ...


def train(
    cfg: Config,
    store_path: Path,
    run_dir: Path,
    *,
    probe: ProbeFactory | None = None,
    eval_every: int = 0,
    init_from: Path | None = None,
) -> None:
    """Train the curriculum of `cfg` on a feature store into a run folder (resuming if it holds
    a checkpoint). Under torchrun every rank calls this; only rank 0 writes.

    With `init_from`, f starts from a user's weights (`coincide.train.init_from`; recorded in the
    run, so resuming does not load them again).

    With a `probe` factory and `eval_every` > 0, rank 0 measures the audio encoder at step 0
    and every `eval_every` steps (`coincide.stages.train` passes a held-out QbE probe that
    writes RUN/eval_curve.csv and TensorBoard's `eval/qbe_map`), so a run shows its learning
    curve."""
    if eval_every < 0:
        raise UserError(f"--eval-every {eval_every} is negative; give a number of steps >= 0.")
    if probe is not None and eval_every == 0:
        raise UserError("--test-store needs --eval-every N (steps between measurements).")
    if eval_every and probe is None:
        raise UserError("--eval-every needs --test-store TEST_STORE (a labeled held-out store).")
    device = dist.setup(cfg.device)
    try:
        _Run(cfg, Path(store_path), Path(run_dir), device, probe, eval_every, init_from).train()
    finally:
        dist.cleanup()


class _Run:
    """One training run; `train()` reads top to bottom."""

    def __init__(
        self,
        cfg: Config,
        store_path: Path,
        run_dir: Path,
        device: torch.device,
        probe_factory: ProbeFactory | None = None,
        eval_every: int = 0,
        init_from: Path | None = None,
    ) -> None:
        self.cfg, self.run_dir, self.device = cfg, run_dir, device
        self.probe_factory, self.eval_every = probe_factory, eval_every
        self.init_from = Path(init_from) if init_from is not None else None
        self.probe: Probe | None = None
        self.rank, self.world, self.main = dist.rank(), dist.world_size(), dist.is_main()
        self.cuda = device.type == "cuda"
        # Precision and memory format are decided once: bf16 autocast and channels_last on GPU.
        self.precision = Precision.for_training(cfg.optim.amp, cfg.optim.channels_last, device)
        self._autocast = self.precision.autocast
        self.channels_last = self.precision.channels_last
        tune_device(device)
        self.store: FeatureStore = open_store(store_path)
        self.store_path = store_path
        self.ckpt_dir = run_dir / CHECKPOINTS_DIR
        self.last_path = self.ckpt_dir / LAST_CHECKPOINT
        self.best_path = self.ckpt_dir / BEST_CHECKPOINT
        # The models at the best held-out measurement of the current stage (CPU copy, every
        # rank): what a stage returns to at its end with curriculum.restore_best.
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stage_best = math.inf  # its held-out value
        self.monitor: Monitor | None = None

    # ---------------------------------------------------------------------------------------
    def train(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)

        # -- data: the store's windows, the stages it supports, held-out media -------------
        if len(self.store) == 0:
            raise UserError(
                f"store {self.store_path} holds no windows; ingest media into it first."
            )
        check_store_finite(self.store)
        self.table = WindowTable(self.store.index)
        self.audio_only = not bool(self.table.has_frame.any())
        self.stages = cfg.curriculum.stages_for(self.audio_only)
        check_stages(self.stages, self.audio_only, self.store_path)
        if cfg.data.batch_size % self.world:
            raise UserError(
                f"data.batch_size {cfg.data.batch_size} does not split over {self.world} "
                "processes; use a multiple of the number of processes."
            )
        self.local_batch = cfg.data.batch_size // self.world
        train_media, self.val_media = split_media(self.table, cfg.eval.val_fraction, cfg.seed)
        self.my_media = rank_share(train_media, self.rank, self.world)

        # -- models and the one optimizer of the curriculum ---------------------------------
        parts = sorted({p for stage in self.stages for p in stage_parts(stage)})
        self.models = build_models(cfg, parts).to(self.device)
        if self.channels_last:
            self.models.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(cfg.optim, self.models)

        # -- resume from the run folder ------------------------------------------------------
        position = Position()
        resumable = load_resumable(self.last_path)
        # A user's f (--init-from) is loaded only into a run that does not resume.
        self.init_note = start_audio_from(
            self.run_dir, self.init_from, self.models["audio"], resumable is not None, self.main
        )
        self.resumed_from = self.last_path
        self.resume_notes: list[str] = []
        if resumable is not None:
            ckpt, self.resumed_from = resumable
            check_resumable(
                ckpt, self.cfg, self.stages, self.audio_only, self.models, self.resumed_from
            )
            self.resume_notes = reweighted_stages(ckpt, self.stages, self.audio_only)
            position = resume(ckpt, self.models, self.optimizer, self.device, self.cuda)
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / CONFIG_FILE)
            loss_names = sorted({n for stage in self.stages for n in stage.losses})
            self.monitor = Monitor(self.run_dir, loss_names, position.step, cfg.log.progress)
            self._announce(position)
            if self.probe_factory is not None and "audio" in self.models:
                self.probe = self.probe_factory(
                    self.run_dir, seed=cfg.seed, writer=self.monitor.writer
                )
                if position.step == 0:
                    self._probe(0)

        # -- the curriculum ------------------------------------------------------------------
        try:
            while position.stage_index < len(self.stages):
                record = self._train_stage(position)
                position.finished.append(record)
                position = Position(
                    step=position.step,
                    stage_index=position.stage_index + 1,
                    finished=position.finished,
                )
                self._write_state(position)
            # The curve ends where the training ended, measured or not by --eval-every.
            if self.probe is not None and position.step % self.eval_every:
                self._probe(position.step)
        finally:
            if self.monitor is not None:
                self.monitor.close()
        if self.main:
            self._write_state(position)
            for line in stage_summaries(self.run_dir, position.finished):
                self._say(line)
            self._say(f"training finished at step {position.step}; models in {self.last_path}")

    # ---------------------------------------------------------------------------------------
    def _train_stage(self, pos: Position) -> dict[str, Any]:
        """Train one stage from `pos` (fresh or resumed) to its plateau or step cap."""
        cfg, index = self.cfg, pos.stage_index
        stage = self.stages[index]
        accum = cfg.optim.grad_accum

        # -- the stage's step over the parts it trains (DDP sees exactly those) ------------
        step = TrainingStep(
            cfg,
            stage,
            self.models,
            self.optimizer,
            self.device,
            self._autocast,
            channels_last=self.channels_last,
            world=self.world,
        )
        objective = step.objective

        # -- batches: this rank's stream, and the fixed held-out pairs ---------------------
        # (coincide.train.triplets picks label-triplet batches for a stage that trains
        # triplet_label.)
        batch, note = stage_batch_size(
            objective, self.table, cfg.data.delta_t, self.local_batch, self.my_media, self.world
        )
        sampler = stage_sampler(
            objective,
            self.table,
            self.store,
            cfg.data.delta_t,
            batch,
            cfg.data.weighting,
            cfg.seed,
            stream=index,
            media=self.my_media,
            rank=self.rank,
        )
        val_batches = stage_validation_batches(
            objective,
            self.table,
            self.store,
            self.val_media,
            cfg.data.delta_t,
            cfg.data.batch_size,
            cfg.eval.val_pairs,
            cfg.seed,
        )
        neighbours = cfg.data.neighbour_batches > 0 and isinstance(sampler, PairSampler)
        if neighbours:
            self._refresh_neighbours(sampler)
        loader = self._batches(sampler, pos.next_batch)
        plateau = Plateau(stage.plateau)
        if pos.plateau is not None:
            plateau.load_state_dict(pos.plateau)
        self.best_state = None
        info = read_best_info(self.run_dir) if self.best_path.is_file() else None
        resumed_best = info is not None and int(info["stage_index"]) == index and pos.stage_step
        self.stage_best = float(info["value"]) if resumed_best else math.inf
        overfitting = Overfitting()
        if self.main:
            self._say(
                f"stage {index + 1}/{len(self.stages)} '{stage.name}': "
                + weights_text(objective.weights)
                + f", up to {stage.max_steps} steps"
                + ("" if val_batches else " (no held-out media: runs to its step cap)")
            )
            if note:
                self._say(f"note: {note}.")
            assert self.monitor is not None
            self.monitor.start_stage(
                stage.name,
                stage.max_steps,
                pos.stage_step,
                may_end_early=bool(val_batches) and stage.plateau.patience > 0,
            )

        # The starting value: a stage that never beats it ends at its start's weights.
        if val_batches and pos.stage_step == 0:
            self._measure(objective, val_batches, stage, pos, plateau, overfitting, None)

        # -- the loop ------------------------------------------------------------------------
        intervals = 0
        speed = Throughput()
        stopped = "step cap"
        lr = learning_rate(cfg.optim, stage.max_steps, pos.stage_step)
        while pos.stage_step < stage.max_steps:
            lr = learning_rate(cfg.optim, stage.max_steps, pos.stage_step)
            step(loader, lr, pos.step)
            pos.next_batch += accum
            pos.step += 1
            pos.stage_step += 1
            intervals += 1
            speed.add(batch * self.world * accum)
            at_cap = pos.stage_step >= stage.max_steps

            # -- log, evaluate, checkpoint ---------------------------------------------------
            if pos.step % cfg.log.every == 0 or at_cap:
                self._check_finite(step.bad_step, stage, pos)
                self._log(pos, stage, step.sums, intervals, lr, speed.rate(), step.watch)
                intervals = 0
            # The QbE probe runs before the plateau test, which may end the stage (a step that
            # ends a stage is still measured).
            if self.probe is not None and pos.step % self.eval_every == 0:
                self._probe(pos.step)
            if val_batches and pos.stage_step % stage.plateau.eval_every == 0:
                self._check_finite(step.bad_step, stage, pos)
                train_loss = float(dist.all_reduce_mean(step.take_monitored()))
                converged = self._measure(
                    objective, val_batches, stage, pos, plateau, overfitting, train_loss
                )
                if converged:
                    stopped = f"plateau at stage step {pos.stage_step}"
                    break
                speed.restart()
            if pos.step % cfg.log.checkpoint_every == 0 and not at_cap:
                self._check_finite(step.bad_step, stage, pos)
                self._save(pos, plateau, finished=False)
                speed.restart()
            if neighbours and pos.stage_step % cfg.data.neighbour_refresh == 0 and not at_cap:
                # A new loader from the next batch number: none of the old one's are lost.
                self._refresh_neighbours(sampler)
                loader = self._batches(sampler, pos.next_batch)
                speed.restart()
            if self.main:
                assert self.monitor is not None
                self.monitor.advance(pos.stage_step)
        del loader  # stops the stage's loader workers

        # -- stage end: back to the best held-out weights, checkpoints, plot, record ---------
        self._check_finite(step.bad_step, stage, pos)
        if intervals:
            self._log(pos, stage, step.sums, intervals, lr, speed.rate(), step.watch)
        restored = None  # back to the stage's best held-out weights: their step (restore_best)
        if cfg.curriculum.restore_best:
            restored = restore_best(self.run_dir, self.models, self.best_state, index, pos.step)
            self.best_state = None
        record = {
            "name": stage.name,
            "steps": pos.stage_step,
            "stopped": stopped,
            "best_val": finite_or_none(plateau.best),
            "restored_best_step": restored,
            "overfitting": overfitting.reported,
        }
        self._save(pos, plateau, finished=True, record=record)
        if self.main:
            assert self.monitor is not None
            self.monitor.end_stage()
            plot = plot_stage(self.run_dir, index + 1, stage.name)
            back = "" if restored is None else f"; back to its best weights of step {restored}"
            self._say(
                f"stage '{stage.name}' done after {pos.stage_step} steps ({stopped}); "
                f"step {pos.step}{back}" + (f"; curves in {plot}" if plot else "")
            )
        return record

    # ---------------------------------------------------------------------------------------
    def _batches(self, sampler: BatchSampler, start: int) -> Iterator[dict[str, torch.Tensor]]:
        # Training batches only: the held-out ones are read unaugmented (_measure).
        augment = None
        if self.cfg.augment.enabled:
            augment = BatchAugment(
                self.cfg.augment, self.store, self.table, self.my_media, self.cfg.seed
            )
        loader = batch_loader(
            PairBatches(self.store, sampler, start, augment),
            workers=self.cfg.data.workers,
            prefetch=self.cfg.data.prefetch,
            pin_memory=self.cuda,
        )
        return iter(loader)

    def _refresh_neighbours(self, sampler: PairSampler) -> None:
        data = self.cfg.data
        refresh_neighbours(
            sampler,
            self.models["audio"],
            self.store,
            self.device,
            data.neighbour_batches,
            data.neighbour_pool,
        )

    def _measure(
        self,
        objective: StageObjective,
        val_batches: list[PairBatch],
        stage: StageConfig,
        pos: Position,
        plateau: Plateau,
        overfitting: Overfitting,
        train_loss: float | None,
    ) -> bool:
        """One held-out evaluation: log it, keep the best weights, watch for memorizing.
        Returns whether the plateau rule ends the stage."""
        held = evaluate_held_out(objective, val_batches, self.store, self.device, self._autocast)
        if not held.finite:
            self._stop_non_finite(stage, pos.step, "held-out loss")
        converged = plateau.update(held.criterion, pos.stage_step)
        # best.pt keeps the lowest value itself; rel_eps only decides what counts as progress.
        if held.criterion < self.stage_best:
            self.stage_best = held.criterion
            self.best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in self.models.state_dict().items()
            }
            self._save_best(pos, plateau, held)
        evidence = None
        if train_loss is not None:
            evidence = overfitting.update(pos.stage_step, train_loss, held.coincidence)
        if self.main:
            assert self.monitor is not None
            self.monitor.log_val(pos.step, stage.name, pos.stage_step, held)
            if evidence is not None:
                self.monitor.warn(overfitting_message(stage.name, evidence))
        return converged

    def _probe(self, step: int) -> None:
        """The probe's figure of the audio encoder (rank 0 only): held-out QbE mAP."""
        assert self.probe is not None
        score = self.probe(self.models["audio"], step)
        self._say(f"step {step}: held-out QbE mAP {score:.4f}")

    def _check_finite(self, bad_step: torch.Tensor, stage: StageConfig, pos: Position) -> None:
        """Stop if any step since the start of the stage had a non-finite loss (on any rank)."""
        step = non_finite_step(bad_step, pos.step)
        if step is not None:
            self._stop_non_finite(stage, step, "loss")

    def _stop_non_finite(self, stage: StageConfig, step: int, what: str) -> None:
        if self.monitor is not None:
            self.monitor.end_stage()
        raise non_finite_error(what, stage.name, step, self.last_path, self.cfg.optim.lr)

    def _log(
        self,
        pos: Position,
        stage: StageConfig,
        sums: dict[str, torch.Tensor],
        intervals: int,
        lr: float,
        pairs_per_s: float,
        watch: ClusterWatch | None,
    ) -> None:
        """Mean losses of the interval (averaged over ranks) to the monitor; reset the sums."""
        names = list(sums)
        means = dist.all_reduce_mean(torch.stack([sums[n] for n in names]) / intervals).tolist()
        for n in names:
            sums[n].zero_()
        clusters = None
        if watch is not None:
            counts = dist.all_reduce_mean(watch.counts) * self.world
            clusters = watch.summary(counts, pos.stage_step)
        if self.main:
            assert self.monitor is not None
            losses = dict(zip(names, means, strict=True))
            self.monitor.log_train(
                pos.step, stage.name, pos.stage_step, losses, lr, pairs_per_s, clusters
            )

    def _save(
        self,
        pos: Position,
        plateau: Plateau,
        finished: bool,
        record: dict[str, Any] | None = None,
    ) -> None:
        """Checkpoint (rank 0): last.pt always, plus stage<N>_<name>.pt at a stage end."""
        if not self.main:
            return
        payload = self._payload(pos, plateau, finished, record)
        stage = self.stages[pos.stage_index]
        if finished:
            save_checkpoint(payload, self.ckpt_dir / f"stage{pos.stage_index + 1}_{stage.name}.pt")
        save_checkpoint(payload, self.last_path, keep_previous=True)
        self._write_state(pos, extra=[record] if record else [])

    def _save_best(self, pos: Position, plateau: Plateau, held: HeldOut) -> None:
        """best.pt and best.json (rank 0), see `coincide.train.position.save_best`."""
        if self.main:
            payload = self._payload(pos, plateau, finished=False, record=None)
            save_best(self.run_dir, payload, held)

    def _payload(
        self, pos: Position, plateau: Plateau, finished: bool, record: dict[str, Any] | None
    ) -> dict[str, Any]:
        state = TrainingState(self.models, self.optimizer, self.stages, pos, plateau)
        return checkpoint_payload(self.cfg, state, finished, record, self.device, self.cuda)

    def _write_state(self, pos: Position, extra: list[dict[str, Any]] | None = None) -> None:
        if self.main:
            write_state(self.run_dir, self.stages, self.audio_only, pos, extra)

    # ---------------------------------------------------------------------------------------

    def _announce(self, pos: Position) -> None:
        self._say(curriculum_line(self.stages, self.audio_only, self.store_path, len(self.store)))
        precision = self.precision.name
        self._say(f"device {self.device} x {self.world} process(es), {precision}")
        if self.init_note:
            self._say(self.init_note)
        if self.last_path.exists():
            self._say(resume_line(self.stages, pos, self.resumed_from, self.run_dir))
        for note in self.resume_notes:
            self._say(note)

    def _say(self, text: str) -> None:
        if self.monitor is not None:
            self.monitor.line(text)
        else:
            print(text, flush=True)


__all__ = ["Probe", "ProbeFactory", "train"]
