"""`coincide.hear`: a run's audio encoder f behind the HEAR common API (HEAR 2021).

```python
import coincide.hear as hear

model = hear.load_model("runs/demo")  # a run folder, a checkpoint or a `coincide export` folder
scene = hear.get_scene_embeddings(audio, model)  # audio: (n_sounds, n_samples) at 16 kHz
embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
```

So f drops into evaluations that load a module by this API (heareval, EVAR):
`python -m heareval.embeddings.runner coincide.hear --model RUN`. What the API asks
(https://hearbenchmark.com/hear-api.html) and how it is met:

- `load_model(model_file_path)` returns a `torch.nn.Module` with the attributes `sample_rate`
  (16000, the rate f was trained at; HEAR's tasks come resampled to it, nothing here resamples),
  `scene_embedding_size` and `timestamp_embedding_size` (both d, the embedding size of f). The
  path is read by `coincide.models.inference.load_model`: a run folder gives f of its newest
  finished fine-tuning, else of its best held-out checkpoint; a checkpoint file or an exported
  folder gives its own f. Only f is used (not a fine-tuned classifier on top).
- `audio` is an `(n_sounds, n_samples)` float tensor of mono samples in [-1, 1] at
  `model.sample_rate`, on any device: the model moves there.
- `get_timestamp_embeddings` returns embeddings at regular intervals *centred* on their
  timestamps, in milliseconds. The audio is zero-padded by half a window (7800 samples) at both
  ends and f embeds a 0.975 s window every `model.hop_ms` (50 ms, the API's suggested upper
  bound): window k covers the original samples [800 k - 7800, 800 k + 7800), so its centre is
  800 k samples = 50 k ms, and the timestamps run from 0 to the end of the audio in exact
  integer-sample steps (no drift on long audio). Shapes: `(n_sounds, n_timestamps, d)` float32
  and `(n_sounds, n_timestamps)` float32.
- `get_scene_embeddings` returns one `(n_sounds, d)` float32 embedding per sound: the mean of f
  over the sound's 1-second windows, the clip embedding of coincide's own clip-level evaluation
  (`coincide.evaluation.qbe.clip_embeddings`) and of `SoundModel.embed` (windows start on whole
  seconds; audio shorter than one window is zero-padded to one).

Both go through the log-mel frontend of ingestion (`coincide.media.frontend.LogMelFrontend`),
in torch on the audio's device, a block of windows at a time so that 20 minutes of audio (the
API's longest) needs the memory of one block of log-mel windows.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from coincide.dist import inference_autocast
from coincide.errors import UserError
from coincide.media.frontend import (
    HOP_LENGTH,
    SAMPLE_RATE,
    WINDOW_SAMPLES,
    LogMelFrontend,
)
from coincide.models.encoders import Encoder
from coincide.models.inference import load_model as load_sound_model

# The hop between timestamp embeddings: the API suggests <= 50 ms (the onset tolerance of its
# music transcription tasks). A multiple of the 10 ms STFT hop, so windows reuse STFT frames.
DEFAULT_HOP_MS = 50
# Windows per encoder call (all sounds of a batch together): bounds the memory of a block.
BLOCK_WINDOWS = 256
_MS_PER_FRAME = 1000 * HOP_LENGTH // SAMPLE_RATE  # 10 ms


class HearModel(nn.Module):
    """f with the log-mel frontend, as the HEAR API's Model.

    Attributes:
        sample_rate: 16000 (Hz), the rate `audio` must have.
        scene_embedding_size, timestamp_embedding_size: d, the embedding size of f.
        hop_ms: milliseconds between timestamp embeddings (a multiple of 10).
        encoder: f, log-mel windows `(batch, 1, 64, 96)` -> `(batch, d)`.
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, encoder: Encoder, hop_ms: int = DEFAULT_HOP_MS) -> None:
        super().__init__()
        if hop_ms < _MS_PER_FRAME or hop_ms % _MS_PER_FRAME:
            raise UserError(
                f"hop_ms {hop_ms} is not a positive multiple of {_MS_PER_FRAME} ms (the STFT "
                "hop); give 10, 20, 50, ..."
            )
        self.encoder = encoder.eval()
        self.hop_ms = int(hop_ms)
        self.scene_embedding_size = int(encoder.config.embed_dim)
        self.timestamp_embedding_size = int(encoder.config.embed_dim)
        # One window per second (scene) and one per hop (timestamps), from the same frontend.
        self.scene_frontend = LogMelFrontend()
        self.timestamp_frontend = LogMelFrontend(step_frames=hop_ms // _MS_PER_FRAME)
        self.eval()

    def embed_windows(self, audio: Tensor, frontend: LogMelFrontend) -> Tensor:
        """f of every window of `audio` `(n_sounds, n_samples)` (at least one window long):
        window k covers samples [k s, k s + 15600) for the frontend's step s, as in
        `LogMelFrontend`. Returns `(n_sounds, n_windows, d)` float32."""
        n_sounds, n_samples = audio.shape
        step = frontend.step_frames * HOP_LENGTH
        n_windows = (n_samples - WINDOW_SAMPLES) // step + 1
        if n_sounds == 0:  # the FFT refuses an empty batch
            return audio.new_zeros(0, n_windows, self.timestamp_embedding_size)
        per_block = max(1, BLOCK_WINDOWS // n_sounds)
        blocks = []
        with torch.inference_mode():
            for first in range(0, n_windows, per_block):
                count = min(per_block, n_windows - first)
                piece = audio[:, first * step : (first + count - 1) * step + WINDOW_SAMPLES]
                # (n_sounds * count, 1, mel, frames), sound-major
                windows = frontend(piece).flatten(0, 1).unsqueeze(1)
                with inference_autocast(audio.device):
                    embedded = self.encoder(windows)
                blocks.append(embedded.float().reshape(n_sounds, count, -1))
        return torch.cat(blocks, dim=1)


def load_model(model_file_path: str = "", hop_ms: int = DEFAULT_HOP_MS) -> HearModel:
    """The HEAR Model of a run folder, a checkpoint file or a `coincide export` folder (see the
    module docstring for which f each gives), on the CPU; `hop_ms` between timestamp
    embeddings."""
    if not str(model_file_path):
        raise UserError(
            "coincide.hear.load_model needs a model path: a run folder (`coincide train`), a "
            "checkpoint file, or a folder written by `coincide export`."
        )
    sound_model = load_sound_model(model_file_path, device="cpu")
    return HearModel(sound_model.encoder, hop_ms)


def _checked(audio: Tensor, model: HearModel) -> tuple[Tensor, HearModel]:
    """`audio` as float32 `(n_sounds, n_samples)` and the model on its device."""
    if not isinstance(model, HearModel):
        raise UserError(
            f"model is a {type(model).__name__}, not a coincide.hear model; load it with "
            "coincide.hear.load_model(path)."
        )
    if not isinstance(audio, Tensor):
        raise UserError(
            f"audio is a {type(audio).__name__}; give a torch.Tensor of shape "
            "(n_sounds, n_samples), e.g. torch.from_numpy(array)."
        )
    if audio.ndim != 2:
        raise UserError(
            f"audio has shape {tuple(audio.shape)}; give (n_sounds, n_samples) mono audio "
            "(add a first dimension for one sound, average the channels of a stereo one)."
        )
    if not torch.is_floating_point(audio):
        raise UserError(
            f"audio has dtype {audio.dtype}; give float samples in [-1, 1] "
            "(divide integer PCM by its full scale, e.g. 32768 for int16)."
        )
    return audio.float(), model.to(audio.device)


def get_timestamp_embeddings(audio: Tensor, model: HearModel) -> tuple[Tensor, Tensor]:
    """Embeddings centred every `model.hop_ms` milliseconds.

    Args:
        audio: `(n_sounds, n_samples)` mono samples in [-1, 1] at `model.sample_rate`.
        model: from `load_model`.

    Returns:
        embeddings `(n_sounds, n_timestamps, model.timestamp_embedding_size)` float32, and
        timestamps `(n_sounds, n_timestamps)` float32: the centre of each embedding's window in
        milliseconds, 0, hop, 2 hop, ... up to the end of the audio
        (n_timestamps = n_samples // (16 hop) + 1).
    """
    audio, model = _checked(audio, model)
    half = WINDOW_SAMPLES // 2
    centred = nn.functional.pad(audio, (half, WINDOW_SAMPLES - half))
    embeddings = model.embed_windows(centred, model.timestamp_frontend)
    n_timestamps = embeddings.shape[1]
    centres = torch.arange(n_timestamps, device=audio.device, dtype=torch.float32) * model.hop_ms
    return embeddings, centres.expand(audio.shape[0], n_timestamps)


def get_scene_embeddings(audio: Tensor, model: HearModel) -> Tensor:
    """One embedding per sound: the mean of f over its 1-second windows.

    Args:
        audio: `(n_sounds, n_samples)` mono samples in [-1, 1] at `model.sample_rate`.
        model: from `load_model`.

    Returns:
        `(n_sounds, model.scene_embedding_size)` float32.
    """
    audio, model = _checked(audio, model)
    if audio.shape[1] < WINDOW_SAMPLES:  # one zero-padded window, as ingestion makes
        audio = nn.functional.pad(audio, (0, WINDOW_SAMPLES - audio.shape[1]))
    return model.embed_windows(audio, model.scene_frontend).mean(dim=1)


__all__ = [
    "DEFAULT_HOP_MS",
    "HearModel",
    "get_scene_embeddings",
    "get_timestamp_embeddings",
    "load_model",
]
