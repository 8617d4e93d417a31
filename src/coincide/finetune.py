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

Evaluation (paper 4.2): window scores p_class(f(x)) on a test store, averaged over each clip's
windows, scored with clip-level mAP and d' over the test classes. A test class the classifier
never saw gets a constant score (it was never labeled: the cost of missing a class).

Outputs in the output folder: `checkpoint.pt` (atomic; a run stopped midway resumes from it),
`metrics.json` (when there is a test store; with each test class's AP), `finetune.json` (the
settings), and the loss curve as `coincide train` records it: `train_log.csv`, `tb/`
(TensorBoard) and `plots/stage1_finetune.png`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from coincide.choices import FINETUNE_STRATEGIES, FinetuneStrategy
from coincide.embed_store import DEFAULT_BATCH_SIZE, default_device, score_windows
from coincide.errors import UserError, short_reason
from coincide.losses import ClassificationLoss
from coincide.metrics import (
    clip_scores,
    labels_to_matrix,
    mean_average_precision,
    mean_d_prime,
    per_class_average_precision,
)
from coincide.models.encoders import Encoder, EncoderConfig, build_encoder
from coincide.models.heads import ClassifierHead
from coincide.store.features import FeatureStore
from coincide.train.checkpoint import CHECKSUM_KEY, payload_checksum, verify_checksum
from coincide.train.monitor import Monitor, Throughput
from coincide.train.report import plot_stage

Strategy = FinetuneStrategy
STRATEGIES = FINETUNE_STRATEGIES
# Where each strategy's f starts: the curriculum checkpoint or fresh weights.
STARTS_FROM_CURRICULUM = {
    "cluster": True,
    "random-scratch": False,
    "random-pretrained": True,
    "all": False,
}
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"
SETTINGS_FILE = "finetune.json"


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run.

    steps: optimizer steps; batch_size: windows per step, drawn uniformly with replacement
        from the labeled windows (seeded per step, so a resumed run draws the same batches).
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
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"finetune {name} is {getattr(self, name)}; it must be positive.")
        if self.lr <= 0 or self.weight_decay < 0 or self.hidden < 0:
            raise UserError("finetune lr must be positive, weight_decay and hidden not negative.")


@dataclass(frozen=True)
class LabeledWindows:
    """The training set: `windows` `(m,)` int64 store indices and their `labels` (m lists)."""

    windows: np.ndarray
    labels: list[list[str]]

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> LabeledWindows:
        """From a `window_index, labels` table (propagated labels); rows without a label drop."""
        keep = [bool(len(labels)) for labels in frame["labels"]]
        kept = frame[keep]
        return cls(
            windows=kept["window_index"].to_numpy(dtype=np.int64),
            labels=[list(labels) for labels in kept["labels"]],
        )

    @classmethod
    def from_window_labels(cls, window_labels: list[list[str]]) -> LabeledWindows:
        """Every window that has a label (the topline's training set)."""
        windows = np.array([i for i, labels in enumerate(window_labels) if labels], dtype=np.int64)
        return cls(windows=windows, labels=[list(window_labels[i]) for i in windows])

    def fingerprint(self) -> str:
        """A short hash of the windows and their labels (a checkpoint belongs to one set)."""
        digest = hashlib.sha256(self.windows.tobytes())
        digest.update(json.dumps(self.labels).encode())
        return digest.hexdigest()[:16]


class Classifier(nn.Module):
    """f followed by p_class; `classes` names the outputs."""

    def __init__(self, encoder: Encoder, head: ClassifierHead, classes: list[str]) -> None:
        nn.Module.__init__(self)
        self.encoder = encoder
        self.head = head
        self.classes = classes

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        """`(batch, 1, mel, frames)` -> class logits `(batch, C)`."""
        return self.head(self.encoder(logmel))


# ---------------------------------------------------------------------------------------------
# Targets and batches


def is_multilabel(labels: list[list[str]], setting: bool | None) -> bool:
    """The classifier kind: the setting when given, else multi-label iff some window has
    several labels."""
    if setting is not None:
        return setting
    return any(len(set(names)) > 1 for names in labels)


def target_matrix(labels: list[list[str]], classes: list[str], multilabel: bool) -> np.ndarray:
    """`(m, C)` float32 targets: multi-hot rows (multi-label) or rows that sum to 1 spread
    evenly over the window's labels (single-label)."""
    matrix, _ = labels_to_matrix(labels, classes)
    targets = matrix.astype(np.float32)
    if not multilabel:
        targets /= np.maximum(targets.sum(axis=1, keepdims=True), 1.0)
    return targets


def _batch_windows(count: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """`(batch_size,)` positions into the labeled set for one step, seeded by (seed, step)."""
    return np.random.default_rng([seed, step]).integers(count, size=batch_size)


def _autocast(device: torch.device, amp: str) -> AbstractContextManager[object]:
    use_bf16 = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


# ---------------------------------------------------------------------------------------------
# Checkpoints


FINETUNE_KEYS = frozenset(
    {"model", "optimizer", "step", "config", "encoder_config", "head_config", "classes"}
)


def _save_atomic(payload: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({**payload, CHECKSUM_KEY: payload_checksum(payload)}, tmp)
    os.replace(tmp, path)


def _write_json(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The payload of a fine-tuning checkpoint, read with `weights_only=True`: tensors, numbers,
    strings and containers only, so a planted pickle in a run folder cannot run code. A file
    that is damaged, foreign or not a fine-tuning checkpoint is a UserError naming it."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged or foreign file
        raise UserError(
            f"cannot read fine-tuning checkpoint {path} ({short_reason(err)}); it is damaged or "
            "not a coincide checkpoint: delete it and fine-tune again."
        ) from err
    if not isinstance(payload, dict) or not set(payload) >= FINETUNE_KEYS:
        raise UserError(
            f"{path} is not a coincide fine-tuning checkpoint; delete it and fine-tune again."
        )
    verify_checksum(payload, path)
    return payload


def load_classifier(path: Path, device: torch.device | None = None) -> Classifier:
    """Rebuild a fine-tuned classifier (f and p_class) from its checkpoint alone."""
    payload = read_checkpoint(path)
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
    labeled: LabeledWindows,
    out_dir: Path,
    cfg: FinetuneConfig,
    settings: dict[str, Any],
    device: torch.device | None = None,
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

    Returns:
        The trained classifier, in eval mode.
    """
    if len(labeled.windows) == 0:
        raise UserError("there is no labeled window to train the classifier on; label first.")
    device = device or default_device()
    torch.manual_seed(cfg.seed)
    classes = sorted({c for names in labeled.labels for c in names})
    multilabel = is_multilabel(labeled.labels, cfg.multilabel)
    head_config = {
        "embed_dim": encoder.config.embed_dim,
        "num_classes": len(classes),
        "multilabel": multilabel,
        "hidden": cfg.hidden,
    }
    model = Classifier(encoder, ClassifierHead(**head_config), classes).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = ClassificationLoss(multilabel)
    targets = torch.from_numpy(target_matrix(labeled.labels, classes, multilabel))

    # Resume from this folder's checkpoint when it belongs to the same run.
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out_dir / CHECKPOINT_FILE
    step = 0
    if checkpoint_path.is_file():
        payload = read_checkpoint(checkpoint_path)
        if payload["config"] != settings:
            raise UserError(
                f"{checkpoint_path} was made with other fine-tuning settings; "
                "choose another --name or delete that folder."
            )
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        step = int(payload["step"])

    def save(at_step: int) -> None:
        _save_atomic(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": None,  # bf16 autocast needs no loss scaling
                "step": at_step,
                "stage": "finetune",
                "config": settings,
                "encoder_config": dataclasses.asdict(encoder.config),
                "head_config": head_config,
                "classes": classes,
            },
            checkpoint_path,
        )

    # Small labeled sets are read once; big ones (propagated labels) batch by batch.
    cached = None
    if len(labeled.windows) <= cfg.cache_windows:
        cached = torch.from_numpy(store.logmel[labeled.windows])

    # The curves as `coincide train` writes them (its Monitor and plot): out_dir/train_log.csv
    # (one row per log_every steps; rows past a resumed checkpoint are dropped), TensorBoard in
    # out_dir/tb, out_dir/plots/stage1_finetune.png. Its pairs_per_s column holds windows/s.
    monitor = Monitor(out_dir, [], step, cfg.progress)
    monitor.start_stage(f"finetune {out_dir.name}", cfg.steps, step)
    speed, loss_sum, summed = Throughput(), 0.0, 0
    model.train()
    try:
        while step < cfg.steps:
            picks = _batch_windows(len(labeled.windows), cfg.batch_size, cfg.seed, step)
            if cached is not None:
                logmel = cached[picks]
            else:
                # Reading sorted rows keeps memory-mapped reads sequential within chunks.
                order = np.argsort(labeled.windows[picks], kind="stable")
                picks = picks[order]
                logmel = torch.from_numpy(store.logmel[labeled.windows[picks]])
            inputs = logmel.unsqueeze(1).to(device, non_blocking=True)
            batch_targets = targets[picks].to(device, non_blocking=True)
            with _autocast(device, cfg.amp):
                logits = model(inputs)
            loss = loss_fn(logits.float(), batch_targets)
            if not torch.isfinite(loss):
                raise UserError(
                    f"the fine-tuning loss became {loss.item()} at step {step}; the last good "
                    f"checkpoint is in {checkpoint_path}; lower the learning rate (--lr) and rerun."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            speed.add(cfg.batch_size)
            loss_sum, summed = loss_sum + loss.item(), summed + 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                losses = {"total": loss_sum / summed}
                monitor.log_train(step, "finetune", step, losses, cfg.lr, speed.rate(), None)
                loss_sum, summed = 0.0, 0
            monitor.advance(step)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save(step)
    finally:
        monitor.close()
    plot_stage(out_dir, 1, "finetune")
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------
# Evaluation


def evaluate_classifier(
    model: Classifier,
    test_store: FeatureStore,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | None = None,
    test_labels: list[list[str]] | None = None,
) -> dict[str, Any]:
    """Clip-level mAP and d' of the classifier on a labeled test store (paper 4.2).

    Window scores are averaged over each clip (`metrics.clip_scores`); the classes scored are
    the test labels' classes, and a class the classifier has no output for scores 0 everywhere.

    Args:
        test_labels: one label list per test window (the clip's labels); None reads the store's.

    Returns:
        {"mAP", "per_class_ap" (class -> AP, None without a positive clip), "d_prime",
        "test_clips", "test_classes", "untrained_classes"}.
    """
    device = device or next(model.parameters()).device
    window_labels = test_labels if test_labels is not None else list(test_store.index["labels"])
    test_classes = sorted({c for names in window_labels for c in names})
    if not test_classes:
        raise UserError(
            f"test store {test_store.root} has no labels, so the classifier cannot be scored; "
            "attach labels with `coincide add-labels`."
        )
    window_scores = score_windows(model.encoder, model.head, test_store, batch_size, device)
    column = {name: c for c, name in enumerate(model.classes)}
    scores = np.zeros((len(window_scores), len(test_classes)), dtype=np.float32)
    for t, name in enumerate(test_classes):
        if name in column:
            scores[:, t] = window_scores[:, column[name]]
    clip_ids = test_store.index["media_id"].to_numpy()
    clips, per_clip = clip_scores(scores, clip_ids)
    first_window = {clip: i for i, clip in reversed(list(enumerate(clip_ids)))}
    truth, _ = labels_to_matrix([window_labels[first_window[c]] for c in clips], test_classes)
    per_class = per_class_average_precision(truth, per_clip)
    return {
        "mAP": mean_average_precision(truth, per_clip),
        "per_class_ap": {
            name: None if np.isnan(ap) else float(ap)
            for name, ap in zip(test_classes, per_class, strict=True)
        },
        "d_prime": mean_d_prime(truth, per_clip),
        "test_clips": int(len(clips)),
        "test_classes": len(test_classes),
        "untrained_classes": [c for c in test_classes if c not in column],
    }


# ---------------------------------------------------------------------------------------------
# One strategy, end to end


def starting_encoder(strategy: Strategy, checkpoint: Path, seed: int) -> Encoder:
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
    strategy: Strategy,
    checkpoint: Path,
    store: FeatureStore,
    labeled: LabeledWindows,
    out_dir: Path,
    cfg: FinetuneConfig,
    test_store: FeatureStore | None = None,
    test_labels: list[list[str]] | None = None,
    extra: dict[str, Any] | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Train and (with a test store) evaluate one strategy into `out_dir`; returns the metrics
    dict also written to `metrics.json`. A folder whose metrics.json was made with the same
    settings is not redone (its metrics are returned)."""
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
    encoder = starting_encoder(strategy, checkpoint, cfg.seed)
    model = train_classifier(encoder, store, labeled, out_dir, cfg, settings, device)
    metrics: dict[str, Any] = {
        "strategy": strategy,
        "labeled_windows": int(len(labeled.windows)),
        "classes": model.classes,
        "multilabel": model.head.multilabel,
        "steps": cfg.steps,
        **(extra or {}),
    }
    if test_store is not None:
        metrics.update(
            evaluate_classifier(model, test_store, cfg.eval_batch_size, device, test_labels)
        )
    metrics["settings"] = settings
    _write_json(out_dir / SETTINGS_FILE, settings)
    _write_json(metrics_path, metrics)
    return metrics


def default_session(strategy: Strategy) -> str | None:
    """The labeling session a strategy reads by default (`coincide label`'s default names)."""
    if strategy == "cluster":
        return "cluster"
    if strategy.startswith("random"):
        return "random"
    return None


def run(
    run_dir: Path,
    store_path: Path,
    strategy: Strategy = "cluster",
    session: str | None = None,
    out: str | None = None,
    test_store_path: Path | None = None,
    oracle: str = "store",
    checkpoint: Path | None = None,
    cfg: FinetuneConfig | None = None,
) -> dict[str, Any]:
    """The `coincide finetune` command: read the labels, train, evaluate, write."""
    from coincide.cluster import default_checkpoint
    from coincide.label import check_propagated_current, oracle_window_labels, read_propagated
    from coincide.store.features import open_store

    cfg = cfg or FinetuneConfig()
    if not Path(run_dir).is_dir():
        raise UserError(f"run folder {run_dir} does not exist; train a run first.")
    checkpoint = Path(checkpoint) if checkpoint else default_checkpoint(run_dir)
    store = open_store(store_path)
    test_store = open_store(test_store_path) if test_store_path else None

    # The labels of this strategy.
    extra: dict[str, Any] = {}
    if strategy == "all":
        labeled = LabeledWindows.from_window_labels(oracle_window_labels(store, oracle))
    else:
        session = session or default_session(strategy)
        assert session is not None
        summary_path = Path(run_dir) / "labels" / session / "summary.json"
        propagated = read_propagated(run_dir, session)
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        wanted = "cluster" if strategy == "cluster" else "random"
        if summary.get("strategy") != wanted:
            raise UserError(
                f"session {session!r} holds {summary.get('strategy')} labels but --strategy "
                f"{strategy} trains on {wanted} labels; pass --session with a {wanted} session."
            )
        check_propagated_current(run_dir, session, summary)
        labeled = LabeledWindows.from_frame(propagated)
        extra = {"session": session, "budget": summary.get("requests")}
        if int(labeled.windows.max(initial=-1)) >= len(store):
            raise UserError(
                f"session {session!r} labels windows beyond the {len(store)} of {store_path}; "
                "fine-tune on the store the session labeled."
            )

    default_out = strategy if strategy == "all" else f"{strategy}-{session}"
    out_dir = Path(run_dir) / "finetune" / (out or default_out)
    metrics = finetune_strategy(
        strategy, checkpoint, store, labeled, out_dir, cfg, test_store, extra=extra
    )
    line = (
        f"{strategy}: trained on {metrics['labeled_windows']} labeled windows, "
        f"{len(metrics['classes'])} classes"
    )
    if "mAP" in metrics:
        line += f"; clip-level mAP {metrics['mAP']:.3f}, d' {metrics['d_prime']:.2f}"
    print(f"{line}; wrote {out_dir}")
    return metrics
