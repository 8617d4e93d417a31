"""`coincide.load_model`: a trained model as an object that scores and embeds waveforms.

```python
model = coincide.load_model("runs/demo")     # a run folder, a checkpoint, or an exported folder
window_scores, clip_scores, classes = model.predict(waveform, sample_rate)
embeddings = model.embed(waveform, sample_rate)            # (n_windows, 128)
```

A `SoundModel` is the audio encoder f, and p_class on top of it when the run has a fine-tuned
classifier. What `load_model(path)` reads:
- an exported folder (`coincide export`): config.json + model.safetensors;
- a fine-tuning folder `RUN/finetune/NAME/` or its `checkpoint.pt`: f and p_class;
- a training checkpoint `RUN/checkpoints/*.pt`: f alone (embedding works, predicting does not);
- a run folder: its newest finished fine-tuning (`RUN/finetune/*/` with `finetune.json`), else
  its best held-out training checkpoint `RUN/checkpoints/best.pt` (`last.pt` for a run without
  one).

Waveforms go through the same log-mel frontend as ingestion (`coincide.media.frontend`), so a
file ingested into a store and the same audio given to `predict` make the same windows. Input at
another sample rate is resampled by libswresample (PyAV), the resampler ingestion decodes with.
Long waveforms are cut into blocks of windows, so memory grows with the block, not the audio.
Clip scores are the mean of the window scores, as in evaluation (paper 4.2).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from coincide.dist import inference_autocast, resolve_device
from coincide.errors import UserError
from coincide.media.frontend import (
    SAMPLE_RATE,
    WINDOW_SAMPLES,
    WINDOW_STEP,
    logmel_windows,
    num_windows,
)
from coincide.models.encoders import Encoder, EncoderConfig, build_encoder
from coincide.models.heads import ClassifierHead
from coincide.run_folder import (
    CHECKPOINTS_DIR,
    FINETUNE_CHECKPOINT,
    FINETUNE_DIR,
    FINETUNE_SETTINGS,
)
from coincide.train.checkpoint import run_checkpoint

EXPORT_FORMAT = "coincide-export"
EXPORT_VERSION = 1
EXPORT_CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
EXPORT_LABELS_FILE = "labels.txt"
ONNX_FILE = "model.onnx"
# The files `coincide finetune` writes in RUN/finetune/NAME/ (a test keeps them in step): named
# here so that loading a model does not import the training code and its dependencies.
# Windows per frontend block and per network call (64 s of audio). The transient memory of a
# block (its waveform, complex STFT, log-mel windows and activations) grows with it: predicting
# an hour of audio peaked about 120 MB higher with blocks of 256 windows than with 64.
BLOCK_WINDOWS = 64
# Samples resampled per libswresample call (bounds the copies an hour of audio would need).
_RESAMPLE_CHUNK = 1 << 20
# A waveform axis this short holds channels (7.1 surround has 8); audio is far longer than this.
MAX_AUTO_CHANNELS = 8


class Prediction(NamedTuple):
    """What `SoundModel.predict` returns (unpacks as a 3-tuple).

    window_scores: `(n_windows, C)` float32 class scores of each 0.96 s window (one per second).
    clip_scores: `(C,)` float32, the mean of the window scores.
    classes: the C class names, column order.
    """

    window_scores: np.ndarray
    clip_scores: np.ndarray
    classes: list[str]


class SoundModel:
    """The audio encoder f with an optional classifier p_class, ready for inference.

    Attributes:
        encoder: f, log-mel windows `(batch, 1, 64, 96)` -> embeddings `(batch, d)`.
        classifier: p_class `(batch, d)` -> logits `(batch, C)`, or None.
        classes: the C class names (empty without a classifier).
        source: the file or folder the model was read from (None when built in memory).
        home: the folder that keeps what is derived from this model (the run folder for a
            checkpoint inside a run; search indexes go to `home/search/`).
        identity: a JSON-ready description of the weights' file (path, size, mtime), so that
            caches derived from the model can tell when it changed.
    """

    def __init__(
        self,
        encoder: Encoder,
        classifier: ClassifierHead | None = None,
        classes: Sequence[str] = (),
        device: str | torch.device | None = None,
        *,
        source: Path | None = None,
        home: Path | None = None,
        identity: dict[str, Any] | None = None,
    ) -> None:
        if classifier is not None:
            outputs = classifier.layers[-1].out_features
            if outputs != len(classes):
                raise ValueError(f"the classifier has {outputs} outputs but {len(classes)} names")
        self.device = resolve_device(device)
        self.encoder = encoder.to(self.device).eval()
        self.classifier = None if classifier is None else classifier.to(self.device).eval()
        self.classes = list(classes)
        self.source = source
        self.home = home
        self.identity = identity or {"source": "memory"}

    def __repr__(self) -> str:
        head = f"{len(self.classes)} classes" if self.classifier is not None else "no classifier"
        return f"SoundModel({self.encoder.config.arch}, d={self.embed_dim}, {head})"

    @property
    def embed_dim(self) -> int:
        """d, the embedding size."""
        return int(self.encoder.config.embed_dim)

    @property
    def multilabel(self) -> bool:
        """True when the classes are scored by independent sigmoids, False for a softmax."""
        return bool(self.classifier is not None and self.classifier.multilabel)

    def require_classifier(self) -> ClassifierHead:
        """p_class, or a UserError saying how to get one."""
        if self.classifier is None:
            where = self.source or "this model"
            raise UserError(
                f"{where} has no classifier (only the audio encoder); run `coincide finetune` on "
                "the run first, or use embeddings instead of class scores."
            )
        return self.classifier

    def _run(self, logmel: np.ndarray, scores: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Log-mel windows `(n, mel, frames)` -> (embeddings `(n, d)`, scores `(n, C)` or None)."""
        classifier = self.require_classifier() if scores else None
        embeddings, class_scores = [], []
        with torch.inference_mode():
            for start in range(0, len(logmel), BLOCK_WINDOWS):
                batch = np.ascontiguousarray(logmel[start : start + BLOCK_WINDOWS])
                inputs = torch.from_numpy(batch).float().unsqueeze(1).to(self.device)
                with inference_autocast(self.device):
                    embedding = self.encoder(inputs)
                    probs = classifier.probs(embedding) if classifier is not None else None
                embeddings.append(embedding.float().cpu().numpy())
                if probs is not None:
                    class_scores.append(probs.float().cpu().numpy())
        if not embeddings:
            empty = np.empty((0, self.embed_dim), np.float32)
            return empty, (np.empty((0, len(self.classes)), np.float32) if scores else None)
        return np.concatenate(embeddings), (np.concatenate(class_scores) if scores else None)

    def embed_logmel(self, logmel: np.ndarray) -> np.ndarray:
        """Log-mel windows `(n, 64, 96)` (as in a store) -> embeddings f(x) `(n, d)` float32."""
        return self._run(np.asarray(logmel), scores=False)[0]

    def score_logmel(self, logmel: np.ndarray) -> np.ndarray:
        """Log-mel windows `(n, 64, 96)` -> class scores p_class(f(x)) `(n, C)` float32 (softmax,
        or a sigmoid per class for a multi-label classifier)."""
        scores = self._run(np.asarray(logmel), scores=True)[1]
        assert scores is not None
        return scores

    def predict(
        self,
        waveform: np.ndarray,
        sample_rate: int = SAMPLE_RATE,
        *,
        channels_first: bool | None = None,
    ) -> Prediction:
        """Class scores of every one-second window of a waveform and of the whole clip.

        Args:
            waveform: `(samples,)` mono, or two axes of channels and samples in either order
                (channels are averaged); float in [-1, 1], or integer PCM (scaled by its type's
                range).
            sample_rate: of `waveform`, in Hz; other rates than 16000 are resampled.
            channels_first: True for `(channels, samples)` (librosa, torchaudio), False for
                `(samples, channels)` (soundfile, scipy.io.wavfile). None: the one axis of at
                most `MAX_AUTO_CHANNELS` entries holds the channels; a shape where that is not
                exactly one axis is refused with a sentence asking for `channels_first`.

        Returns:
            `Prediction(window_scores (n, C), clip_scores (C,), classes)`; window j starts at
            j seconds.
        """
        self.require_classifier()
        windows = logmel_blocks(waveform, sample_rate, channels_first=channels_first)
        blocks = [self.score_logmel(block) for block in windows]
        window_scores = np.concatenate(blocks)
        return Prediction(window_scores, window_scores.mean(axis=0), list(self.classes))

    def embed(
        self,
        waveform: np.ndarray,
        sample_rate: int = SAMPLE_RATE,
        *,
        channels_first: bool | None = None,
    ) -> np.ndarray:
        """Embeddings f(x) `(n_windows, d)` float32 of every one-second window of a waveform
        (arguments as `predict`)."""
        windows = logmel_blocks(waveform, sample_rate, channels_first=channels_first)
        blocks = [self.embed_logmel(block) for block in windows]
        return np.concatenate(blocks)


# ---------------------------------------------------------------------------------------------
# Waveforms to windows


def _as_mono_float(waveform: np.ndarray, channels_first: bool | None = None) -> np.ndarray:
    """`(samples,)` or a two-axis array of channels and samples -> mono float32 `(samples,)`."""
    samples = np.asarray(waveform)
    if samples.ndim not in (1, 2):
        raise UserError(
            f"a waveform must be (samples,), (channels, samples) or (samples, channels), not "
            f"shape {samples.shape}; reshape it."
        )
    if samples.size == 0:
        raise UserError("the waveform is empty; give at least one sample of audio.")
    if samples.ndim == 2:
        channel_axis = _channel_axis(samples.shape, channels_first)
        return _scaled(samples).mean(axis=channel_axis, dtype=np.float32)
    return _scaled(samples)


def _channel_axis(shape: tuple[int, ...], channels_first: bool | None) -> int:
    """The axis of a two-axis waveform that holds the channels (see `SoundModel.predict`)."""
    if channels_first is not None:
        return 0 if channels_first else 1
    few = [axis for axis in (0, 1) if shape[axis] <= MAX_AUTO_CHANNELS]
    if len(few) != 1:
        raise UserError(
            f"a waveform of shape {shape} does not say which axis holds the channels; pass "
            "channels_first=True for (channels, samples) or channels_first=False for "
            "(samples, channels)."
        )
    return few[0]


def _scaled(samples: np.ndarray) -> np.ndarray:
    if np.issubdtype(samples.dtype, np.integer):
        info = np.iinfo(samples.dtype)
        return (samples.astype(np.float32) / float(max(-info.min, info.max))).astype(np.float32)
    return samples.astype(np.float32, copy=False)


def resample(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono float32 `(samples,)` at `sample_rate` -> 16 kHz, with libswresample (as decoding)."""
    import av

    if sample_rate != int(sample_rate) or sample_rate < 1:
        raise UserError(f"sample_rate must be a positive whole number of Hz, not {sample_rate}.")
    if sample_rate == SAMPLE_RATE:
        return waveform
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    pieces: list[np.ndarray] = []
    for start in range(0, len(waveform), _RESAMPLE_CHUNK):
        chunk = np.ascontiguousarray(waveform[None, start : start + _RESAMPLE_CHUNK])
        frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
        frame.sample_rate = int(sample_rate)
        pieces += [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
    pieces += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    return np.concatenate(pieces).astype(np.float32, copy=False)


def logmel_blocks(
    waveform: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    block_windows: int = BLOCK_WINDOWS,
    *,
    channels_first: bool | None = None,
) -> Iterator[np.ndarray]:
    """Log-mel windows of a waveform, `(<= block_windows, 64, 96)` float32 blocks in order.

    Window j covers samples [16000 j, 16000 j + 15600) of the 16 kHz signal, so block b is the
    frontend applied to the slice from window b * block_windows to the end of its last window:
    the blocks concatenate to `logmel_windows` of the whole signal.
    """
    samples = resample(_as_mono_float(waveform, channels_first), sample_rate)
    n_windows = num_windows(len(samples))
    for first in range(0, n_windows, block_windows):
        last = min(first + block_windows, n_windows) - 1
        end = len(samples) if last == n_windows - 1 else last * WINDOW_STEP + WINDOW_SAMPLES
        yield logmel_windows(samples[first * WINDOW_STEP : end])


# ---------------------------------------------------------------------------------------------
# Loading


def _file_identity(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"model": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _run_folder_of(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to (RUN/checkpoints/x.pt, RUN/finetune/NAME/x.pt), or
    the checkpoint's own folder when it lies elsewhere."""
    parent = checkpoint.resolve().parent
    if parent.name == CHECKPOINTS_DIR:
        return parent.parent
    if parent.parent.name == "finetune":
        return parent.parent.parent
    return parent


def finished_finetunes(run: Path) -> list[Path]:
    """Checkpoints of the run's finished fine-tunings (`RUN/finetune/*/checkpoint.pt` next to a
    `finetune.json`, which is written when training ends), newest first."""
    found = [
        folder / FINETUNE_CHECKPOINT
        for folder in sorted((run / FINETUNE_DIR).glob("*"))
        if (folder / FINETUNE_CHECKPOINT).is_file() and (folder / FINETUNE_SETTINGS).is_file()
    ]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def find_checkpoint(path: Path) -> Path:
    """The checkpoint `load_model(path)` reads for a file or a run / fine-tuning folder."""
    if path.is_file():
        return path
    if (path / FINETUNE_CHECKPOINT).is_file():
        return path / FINETUNE_CHECKPOINT
    finetuned = finished_finetunes(path)
    if finetuned:
        return finetuned[0]
    if (path / CHECKPOINTS_DIR).is_dir():
        return run_checkpoint(path)
    raise UserError(
        f"{path} holds no model: give a run folder (train it with `coincide train`), a "
        "checkpoint file, or a folder written by `coincide export`."
    )


def load_model(path: str | Path, device: str | torch.device | None = None) -> SoundModel:
    """Read a model for inference from a run folder, a checkpoint or an exported folder.

    See the module docstring for what each kind of path gives. `device`: "cpu", "cuda", or
    None / "auto" for the GPU when there is one.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; give a run folder or an exported model folder.")
    if path.is_dir() and (path / EXPORT_CONFIG_FILE).is_file():
        return load_exported(path, device)
    checkpoint = find_checkpoint(path)
    from coincide.train.checkpoint import (
        checkpoint_config,
        checkpoint_kind,
        load_checkpoint,
        read_checkpoint_file,
    )

    payload = read_checkpoint_file(checkpoint)
    where = {"source": checkpoint, "home": _run_folder_of(checkpoint)}
    identity = _file_identity(checkpoint)
    if checkpoint_kind(payload) == "finetune":
        # A fine-tuning checkpoint: the state of the classifier, `encoder.*` and `head.*`.
        encoder = build_encoder(EncoderConfig(**payload["encoder_config"]))
        encoder.load_state_dict(_with_prefix(payload["model"], "encoder."))
        head = ClassifierHead(**payload["head_config"])
        head.load_state_dict(_with_prefix(payload["model"], "head."))
        classes = list(payload["classes"])
        return SoundModel(encoder, head, classes, device, identity=identity, **where)
    payload = load_checkpoint(checkpoint)  # a training checkpoint: checks the version
    if "audio" not in payload["parts"]:
        raise UserError(f"{checkpoint} holds no audio encoder; give a checkpoint of a run.")
    encoder = build_encoder(checkpoint_config(payload).model.audio)
    prefix = "audio."
    state = {k[len(prefix) :]: v for k, v in payload["models"].items() if k.startswith(prefix)}
    encoder.load_state_dict(state)
    return SoundModel(encoder, None, (), device, identity=identity, **where)


def read_export_config(folder: Path) -> dict[str, Any]:
    """The config.json of an exported folder, checked for format and version."""
    path = folder / EXPORT_CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path} ({err}); export the model again.") from err
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
        raise UserError(f"{path} is not a coincide export; give a folder from `coincide export`.")
    if config.get("version") != EXPORT_VERSION:
        raise UserError(
            f"{path} is export version {config.get('version')}, this coincide reads "
            f"{EXPORT_VERSION}; export the model again with this version."
        )
    return config


def load_exported(folder: Path, device: str | torch.device | None = None) -> SoundModel:
    """Read a folder written by `coincide export` (config.json + model.safetensors)."""
    from safetensors.torch import load_file

    config = read_export_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise UserError(f"{weights} is missing; export the model again.")
    tensors = load_file(str(weights))
    encoder = build_encoder(EncoderConfig(**config["encoder"]))
    encoder.load_state_dict(_with_prefix(tensors, "encoder."))
    classifier = None
    if config.get("classifier") is not None:
        classifier = ClassifierHead(**config["classifier"])
        classifier.load_state_dict(_with_prefix(tensors, "head."))
    return SoundModel(
        encoder,
        classifier,
        config.get("classes", []),
        device,
        source=folder,
        home=folder,
        identity=_file_identity(weights),
    )


def _with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def model_state(model: SoundModel) -> dict[str, torch.Tensor]:
    """All weights and statistics of f (`encoder.*`) and p_class (`head.*`, the key names of a
    fine-tuning checkpoint's Classifier), contiguous CPU tensors."""
    parts = {"encoder.": model.encoder.state_dict()}
    if model.classifier is not None:
        parts["head."] = model.classifier.state_dict()
    return {
        prefix + key: value.detach().cpu().contiguous()
        for prefix, state in parts.items()
        for key, value in state.items()
    }


def model_config(model: SoundModel) -> dict[str, Any]:
    """The configs that rebuild the model: encoder, classifier head (or None), classes."""
    classifier = None
    if model.classifier is not None:
        hidden_layers = [m for m in model.classifier.layers if isinstance(m, torch.nn.Linear)]
        classifier = {
            "embed_dim": model.embed_dim,
            "num_classes": len(model.classes),
            "multilabel": model.multilabel,
            "hidden": hidden_layers[0].out_features if len(hidden_layers) > 1 else 0,
        }
    return {
        "encoder": asdict(model.encoder.config),
        "classifier": classifier,
        "classes": list(model.classes),
        "multilabel": model.multilabel,
    }


# A multi-label classifier's default rule: every class scoring at least this.
MULTILABEL_THRESHOLD = 0.5


@dataclass(frozen=True)
class LabelRule:
    """How scores become labels: classes scoring >= `threshold`, or the `top` best."""

    threshold: float | None = None
    top: int | None = None

    @classmethod
    def for_model(cls, model: SoundModel, threshold: float | None, top: int | None) -> LabelRule:
        """The rule the flags ask for, or the default for the model's kind of classifier."""
        if threshold is not None and top is not None:
            raise UserError("--threshold and --top choose labels in two ways; pass only one.")
        if top is not None and top < 1:
            raise UserError(f"--top must be at least 1, not {top}.")
        if threshold is None and top is None:
            return cls(threshold=MULTILABEL_THRESHOLD) if model.multilabel else cls(top=1)
        return cls(threshold=threshold, top=top)

    def indices(self, scores: np.ndarray) -> list[np.ndarray]:
        """`(n, C)` scores -> for each row the chosen class indices, best first."""
        order = np.argsort(-scores, axis=1, kind="stable")
        if self.top is not None:
            return list(order[:, : self.top])
        return [row[scores[i, row] >= self.threshold] for i, row in enumerate(order)]

    def labels(self, scores: np.ndarray, classes: Sequence[str]) -> list[list[str]]:
        """`(n, C)` scores -> for each row the chosen class names, best first."""
        return [[classes[c] for c in row] for row in self.indices(scores)]
