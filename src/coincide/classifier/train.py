"""`coincide finetune`: train the classifier p_class on labeled windows (paper 3.3, 3.4, 4.2).

"After cluster-based labeling, we fine-tune the embedding model, f, using only the classifier
objective, L_class of Equation 3." Strategies (what labels, which starting point for f):

    cluster            a cluster session's propagated labels   the curriculum model (the paper)
    random-scratch     a random session's N labels             a freshly initialised f (paper)
    random-pretrained  a random session's N labels             the curriculum model
    all                every labeled window of the store       a freshly initialised f (topline)

`random-pretrained` is not in the paper: it separates what the pretraining gives from what the
cluster labeling gives. Every strategy trains the same network (f then p_class) with the same
loop, so they differ only in their labels and starting weights.

Single-label data (softmax over classes) and multi-label data (a sigmoid per class) are both
handled; by default a window with more than one label makes the classifier multi-label. In the
single-label case a window with several labels gets a target spread evenly over them.

Evaluation (paper 4.2, `coincide.classifier.evaluate`): window scores p_class(f(x)) on a test
store, averaged over each clip's windows, scored with clip-level mAP and d' over the test
classes. A test class the classifier never saw gets a constant score.

How long to train is picked on held-out labeled windows; a pretrained f starts with a p_class
fitted on its frozen embeddings (`coincide.classifier.fit`). Outputs: `checkpoint.pt` (atomic;
a run stopped in its final training resumes from it), `metrics.json` (with a test store; with
each test class's AP), `finetune.json` (the settings) and the final training's loss curve as
`coincide train` records it: `train_log.csv`, `tb/` (TensorBoard, with the optional extra) and
`plots/stage1_finetune.png`. The command itself is `coincide.stages.finetune.run`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from coincide.classifier.evaluate import evaluate_classifier
from coincide.classifier.fit import (
    LabelTargets,
    batch_positions,
    choose_steps,
    classifier_loss,
    fit_head,
    freeze_batchnorm,
    is_multilabel,
)
from coincide.config.choices import FINETUNE_STRATEGIES, FinetuneStrategy
from coincide.dist import amp_dtype, autocast_context, default_device
from coincide.errors import UserError
from coincide.evaluation.representations import embed_positions
from coincide.files import write_json_atomic
from coincide.models.embed_store import DEFAULT_BATCH_SIZE
from coincide.models.encoders import Encoder, EncoderConfig, build_encoder
from coincide.models.heads import ClassifierHead
from coincide.run_folder import FINETUNE_CHECKPOINT, FINETUNE_SETTINGS, METRICS_FILE
from coincide.store.features import FeatureStore
from coincide.train.checkpoint import (
    FINETUNE_FORMAT,
    FINETUNE_VERSION,
    load_finetune_checkpoint,
    save_checkpoint,
)
from coincide.train.monitor import Monitor, Throughput
from coincide.train.report import plot_stage

STRATEGIES = FINETUNE_STRATEGIES
# Where each strategy's f starts: the curriculum checkpoint or fresh weights.
STARTS_FROM_CURRICULUM = {
    "cluster": True,
    "random-scratch": False,
    "random-pretrained": True,
    "all": False,
}


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run.

    steps: optimizer steps of f and p_class; with `early_stop`, the most that are tried.
    batch_size: windows per step, drawn with replacement (seeded per step: a resumed run draws
        the same batches); a labeled set no larger than a batch is used whole at every step.
    early_stop: pick the number of steps on a held-out share (`val_fraction`) of the labeled
        media, measured every `eval_every` steps and stopping after `patience` measurements
        without improvement, then train again on every label (`coincide.classifier.fit`);
        `val_windows` caps the validation windows measured. False: exactly `steps` steps.
    head_steps, head_lr: with a pretrained f, p_class is first fitted alone on the frozen
        embeddings (full batch, at most `head_steps` AdamW steps at `head_lr`).
    lr, weight_decay: AdamW (one learning rate for f and p_class).
    multilabel: sigmoid per class (True), softmax (False), or None: multi-label when some
        labeled window has more than one label.
    hidden: width of a hidden ReLU layer in p_class (0: a linear classifier, as SPEC's C-way
        output on the embedding).
    checkpoint_every: steps between checkpoints (one is also written at the end).
    log_every: steps per row of the loss curve (train_log.csv, TensorBoard, the plot).
    cache_windows: labeled sets up to this many windows are read into memory once; larger ones
        are read from the store batch by batch.
    eval_batch_size: windows per forward pass when scoring the test store.
    amp: "auto" (bf16 autocast on CUDA, float32 on CPU), "bf16" or "fp32".
    """

    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 1e-4
    multilabel: bool | None = None
    hidden: int = 0
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    cache_windows: int = 20000
    eval_batch_size: int = DEFAULT_BATCH_SIZE
    amp: Literal["auto", "bf16", "fp32"] = "auto"
    early_stop: bool = True
    val_fraction: float = 0.2
    eval_every: int = 25
    patience: int = 4
    val_windows: int = 512
    head_steps: int = 500
    head_lr: float = 1e-2
    progress: bool = True

    def __post_init__(self) -> None:
        positive = (
            "steps",
            "batch_size",
            "checkpoint_every",
            "log_every",
            "eval_batch_size",
            "eval_every",
        )
        for name in (*positive, "patience", "val_windows", "head_steps"):
            if getattr(self, name) < 1:
                raise UserError(f"finetune {name} is {getattr(self, name)}; it must be positive.")
        if self.lr <= 0 or self.head_lr <= 0 or self.weight_decay < 0 or self.hidden < 0:
            raise UserError("finetune lr must be positive, weight_decay and hidden not negative.")
        if not 0 < self.val_fraction < 1:
            raise UserError(f"finetune val_fraction is {self.val_fraction}; give one in (0, 1).")


@dataclass(frozen=True)
class TrainingSet:
    """The training set: `windows` `(m,)` int64 store indices and their `labels` (m lists).

    Partial labels (search answers) add `negatives` (m lists of classes known to be absent) and
    `closed` `(m,)` bool: False for a window whose other classes are unknown. None means no
    negatives and every window closed-world (cluster and random labels). `groups` `(m,)`: what
    validation holds out whole, e.g. the answered cluster a propagated label came from (None:
    the media file).
    """

    windows: np.ndarray
    labels: list[list[str]]
    negatives: list[list[str]] | None = None
    closed: np.ndarray | None = None
    groups: np.ndarray | None = None

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, by_cluster: bool = False) -> TrainingSet:
        """From a `window_index, labels[, cluster_id]` table (propagated labels); rows without a
        label drop. `by_cluster`: validation holds out whole answered clusters."""
        keep = [bool(len(labels)) for labels in frame["labels"]]
        kept = frame[keep]
        return cls(
            windows=kept["window_index"].to_numpy(dtype=np.int64),
            labels=[list(labels) for labels in kept["labels"]],
            groups=kept["cluster_id"].to_numpy(dtype=np.int64) if by_cluster else None,
        )

    @classmethod
    def from_window_labels(cls, window_labels: list[list[str]]) -> TrainingSet:
        """Every window that has a label (the topline's training set)."""
        windows = np.array([i for i, labels in enumerate(window_labels) if labels], dtype=np.int64)
        return cls(windows=windows, labels=[list(window_labels[i]) for i in windows])

    def fingerprint(self) -> str:
        """A short hash of the windows and their labels (a checkpoint belongs to one set)."""
        digest = hashlib.sha256(self.windows.tobytes())
        digest.update(json.dumps(self.labels).encode())
        if self.negatives is not None or self.closed is not None:
            digest.update(json.dumps(self.negatives).encode())
            digest.update(np.asarray(self.closed, dtype=bool).tobytes())
        if self.groups is not None:
            digest.update(b"groups" + np.asarray(self.groups, dtype=np.int64).tobytes())
        return digest.hexdigest()[:16]

    def classes(self) -> list[str]:
        """The classes p_class outputs: every positive label, sorted."""
        return sorted({c for names in self.labels for c in names})


class Classifier(nn.Module):
    """f followed by p_class; `classes` names the outputs."""

    def __init__(self, encoder: Encoder, head: ClassifierHead, classes: list[str]) -> None:
        nn.Module.__init__(self)
        self.encoder = encoder
        self.head = head
        self.classes = classes
        # Steps f was trained (0: only p_class learned, f's embeddings are unchanged) and the
        # step counts training chose (`coincide.classifier.fit.choose_steps`).
        self.encoder_steps = 0
        self.selected: dict[str, Any] = {}

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        """`(batch, 1, mel, frames)` -> class logits `(batch, C)`."""
        return self.head(self.encoder(logmel))


# ---------------------------------------------------------------------------------------------
# Targets and batches


# ---------------------------------------------------------------------------------------------
# Checkpoints


# Older checkpoints have no "selected" (the step counts early stopping chose): they are trained
# with a fixed step count and never resumed by this version (their settings differ).


def _save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    save_checkpoint({"format": FINETUNE_FORMAT, "version": FINETUNE_VERSION, **payload}, path)


def load_classifier(path: Path, device: torch.device | None = None) -> Classifier:
    """Rebuild a fine-tuned classifier (f and p_class) from its checkpoint alone."""
    payload = load_finetune_checkpoint(path)
    encoder = build_encoder(EncoderConfig(**payload["encoder_config"]))
    head = ClassifierHead(**payload["head_config"])
    model = Classifier(encoder, head, list(payload["classes"]))
    model.load_state_dict(payload["model"])
    return model.to(device or default_device())


# ---------------------------------------------------------------------------------------------
# Training


def train_classifier(
    encoder: Encoder,
    store: FeatureStore,
    labeled: TrainingSet,
    out_dir: Path,
    cfg: FinetuneConfig,
    settings: dict[str, Any],
    device: torch.device | None = None,
    frozen: np.ndarray | None = None,
) -> Classifier:
    """Fine-tune `encoder` with a new p_class on the labeled windows, with L_class only.

    Args:
        encoder: f, as it should start (curriculum weights or fresh ones); trained in place.
        store: the feature store the window indices refer to.
        labeled: the training windows and their labels (at least one).
        out_dir: where `checkpoint.pt` goes; a checkpoint there made with the same `settings`
            is resumed, one made with other settings is a UserError.
        settings: what identifies this run (strategy, labels, start, config), kept in the
            checkpoint.
        frozen: `(m, d)` embeddings of the labeled windows under the starting f (pretrained f
            only): p_class is first fitted on them, and BatchNorm keeps f's statistics.

    Returns:
        The trained classifier, in eval mode.
    """
    if len(labeled.windows) == 0:
        raise UserError("there is no labeled window to train the classifier on; label first.")
    device = device or default_device()
    torch.manual_seed(cfg.seed)
    classes = labeled.classes()
    multilabel = is_multilabel(labeled.labels, cfg.multilabel)
    head_config = {
        "embed_dim": encoder.config.embed_dim,
        "num_classes": len(classes),
        "multilabel": multilabel,
        "hidden": cfg.hidden,
    }
    model = Classifier(encoder, ClassifierHead(**head_config), classes).to(device)
    start = copy.deepcopy(model.state_dict())
    targets = LabelTargets.build(
        labeled.labels, classes, multilabel, labeled.negatives, labeled.closed
    ).to(device)
    frozen_rows = (
        None if frozen is None else torch.from_numpy(np.array(frozen, dtype=np.float32)).to(device)
    )

    # Small labeled sets are read once; big ones (propagated labels) batch by batch.
    cached = None
    if len(labeled.windows) <= cfg.cache_windows:
        cached = torch.from_numpy(store.logmel[labeled.windows])

    def batch(positions: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """Log-mel inputs `(b, 1, mel, frames)` of labeled positions, and the positions in
        the order of the inputs."""
        if cached is None:
            # Sorted rows keep memory-mapped reads sequential within chunks.
            positions = positions[np.argsort(labeled.windows[positions], kind="stable")]
            logmel = torch.from_numpy(store.logmel[labeled.windows[positions]])
        else:
            logmel = cached[positions]
        return logmel.unsqueeze(1).to(device, non_blocking=True), positions

    def train_mode() -> None:
        model.train()
        if frozen_rows is not None:
            freeze_batchnorm(model)

    def step_loss(optimizer: torch.optim.Optimizer, positions: np.ndarray, step: int) -> float:
        logmel, rows = batch(positions)
        with autocast_context(device, amp_dtype(cfg.amp, device)):
            logits = model(logmel)
        loss = classifier_loss(logits.float(), targets.rows(rows))
        if not torch.isfinite(loss):
            raise UserError(
                f"the fine-tuning loss became {loss.item()} at step {step}; lower the learning "
                f"rate (--lr) and rerun (the last good checkpoint is in {out_dir})."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.item())

    # Resume from this folder's checkpoint when it belongs to the same run.
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out_dir / FINETUNE_CHECKPOINT
    payload = None
    if checkpoint_path.is_file():
        payload = load_finetune_checkpoint(checkpoint_path)
        if payload["config"] != settings:
            raise UserError(
                f"{checkpoint_path} was made with other fine-tuning settings; "
                "choose another --name or delete that folder."
            )

    # How many steps: chosen on held-out media (or the fixed counts), unless resuming.
    if payload is not None:
        selected = dict(payload["selected"])
    else:
        # Which media file each labeled window comes from: the validation split keeps files whole.
        # What validation holds out whole: answered clusters, or media files.
        groups = None
        if cfg.early_stop:
            groups = (
                labeled.groups
                if labeled.groups is not None
                else store.index["media_id"].to_numpy()[labeled.windows]
            )
        with _progress(cfg.progress, f"{out_dir.name}: choosing steps") as progress:
            task = progress.add_task("select", total=cfg.steps, loss=float("nan"))

            def shown_step(optimizer: torch.optim.Optimizer, rows: np.ndarray, at: int) -> float:
                loss = step_loss(optimizer, rows, at)
                progress.update(task, completed=at + 1, loss=loss)
                return loss

            selected = choose_steps(
                model, groups, targets, frozen_rows, cfg, train_mode, shown_step, batch
            )
        model.load_state_dict(start)
        if frozen_rows is not None:
            fit_head(
                model.head,
                frozen_rows,
                targets,
                selected["head_steps"],
                cfg.head_lr,
                cfg.weight_decay,
            )

    # Training on every label for the chosen number of steps.
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = 0
    if payload is not None:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        step = int(payload["step"])

    def save(at_step: int) -> None:
        _save_checkpoint(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": None,  # bf16 autocast needs no loss scaling
                "step": at_step,
                "stage": "finetune",
                "config": settings,
                "selected": selected,
                "encoder_config": dataclasses.asdict(encoder.config),
                "head_config": head_config,
                "classes": classes,
            },
            checkpoint_path,
        )

    # The final training's curve as `coincide train` writes it (its Monitor and plot):
    # out_dir/train_log.csv (one row per log_every steps; rows past a resumed checkpoint are
    # dropped), TensorBoard in out_dir/tb, out_dir/plots/stage1_finetune.png. Its pairs_per_s
    # column holds windows/s.
    total = int(selected["steps"])
    train_mode()
    if step < total:
        monitor = Monitor(out_dir, [], step, cfg.progress)
        monitor.start_stage(f"finetune {out_dir.name}", total, step)
        speed, loss_sum, summed = Throughput(), 0.0, 0
        try:
            while step < total:
                picks = batch_positions(len(labeled.windows), cfg.batch_size, cfg.seed, step)
                loss = step_loss(optimizer, picks, step)
                step += 1
                speed.add(cfg.batch_size)
                loss_sum, summed = loss_sum + loss, summed + 1
                if step % cfg.log_every == 0 or step == total:
                    losses = {"total": loss_sum / summed}
                    monitor.log_train(step, "finetune", step, losses, cfg.lr, speed.rate(), None)
                    loss_sum, summed = 0.0, 0
                monitor.advance(step)
                if step % cfg.checkpoint_every == 0:
                    save(step)
        finally:
            monitor.close()
    save(step)
    if total > 0:
        plot_stage(out_dir, 1, "finetune")
    model.eval()
    model.encoder_steps, model.selected = total, selected
    return model


def _progress(enabled: bool, name: str) -> Any:
    """Progress with the loss and the time left: a bar on a terminal, plain lines elsewhere."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

    from coincide.console import EtaColumn, progress

    return progress(
        TextColumn(f"[bold]{name}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        EtaColumn(),
        enabled=enabled,
        transient=True,
    )


# ---------------------------------------------------------------------------------------------
# One strategy, end to end


def starting_encoder(strategy: FinetuneStrategy, checkpoint: Path, seed: int) -> Encoder:
    """f as the strategy starts it: the curriculum checkpoint's weights, or fresh weights of
    the same architecture (seeded)."""
    from coincide.train.checkpoint import load_models

    pretrained = load_models(checkpoint)["audio"]
    if STARTS_FROM_CURRICULUM[strategy]:
        return pretrained
    torch.manual_seed(seed)
    return build_encoder(EncoderConfig(**dataclasses.asdict(pretrained.config)))


def _checkpoint_identity(checkpoint: Path) -> dict[str, Any]:
    stat = checkpoint.stat()
    return {"path": str(checkpoint.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def finetune_strategy(
    strategy: FinetuneStrategy,
    checkpoint: Path,
    store: FeatureStore,
    labeled: TrainingSet,
    out_dir: Path,
    cfg: FinetuneConfig,
    test_store: FeatureStore | None = None,
    test_labels: list[list[str]] | None = None,
    extra: dict[str, Any] | None = None,
    device: torch.device | None = None,
    embeddings: np.ndarray | None = None,
    test_embeddings: np.ndarray | None = None,
) -> dict[str, Any]:
    """Train and (with a test store) evaluate one strategy into `out_dir`; returns the metrics
    dict also written to `metrics.json`. A folder whose metrics.json was made with the same
    settings is not redone (its metrics are returned).

    Args:
        embeddings, test_embeddings: `(n, d)` f(x) of every window of `store` and of
            `test_store` under the checkpoint's f, when the caller has them (Table 3 embeds
            each store once): the warm start reads them instead of running f, and a classifier
            whose f was not trained is scored from them. Computed when needed otherwise.
    """
    settings = {
        "strategy": strategy,
        "start": _checkpoint_identity(checkpoint)
        if STARTS_FROM_CURRICULUM[strategy]
        else "scratch",
        "architecture_from": str(checkpoint.resolve()),
        "labels": labeled.fingerprint(),
        "store": str(store.root.resolve()),
        "test_store": str(test_store.root.resolve()) if test_store else None,
        # What shows progress does not change the result: left out, so either may differ on resume.
        "config": {
            k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("progress", "log_every")
        },
        **(extra or {}),
    }
    metrics_path = out_dir / METRICS_FILE
    if metrics_path.is_file():
        done = json.loads(metrics_path.read_text(encoding="utf-8"))
        if done.get("settings") == settings:
            return done
    device = device or default_device()
    encoder = starting_encoder(strategy, checkpoint, cfg.seed).to(device)
    frozen = None
    if STARTS_FROM_CURRICULUM[strategy]:
        frozen = (
            np.asarray(embeddings[labeled.windows], dtype=np.float32)
            if embeddings is not None
            else embed_positions(encoder, store, labeled.windows, cfg.eval_batch_size, device)
        )
    model = train_classifier(encoder, store, labeled, out_dir, cfg, settings, device, frozen)
    metrics: dict[str, Any] = {
        "strategy": strategy,
        "labeled_windows": int(len(labeled.windows)),
        "classes": model.classes,
        "multilabel": model.head.multilabel,
        "steps": model.encoder_steps,
        "head_steps": model.selected["head_steps"],
        "validation_windows": model.selected["validation_windows"],
        **(extra or {}),
    }
    if test_store is not None:
        untouched = test_embeddings if frozen is not None else None
        metrics.update(
            evaluate_classifier(
                model, test_store, cfg.eval_batch_size, device, test_labels, untouched
            )
        )
    metrics["settings"] = settings
    write_json_atomic(out_dir / FINETUNE_SETTINGS, settings)
    write_json_atomic(metrics_path, metrics)
    return metrics
