"""`coincide export`: the model as files other programs read, without coincide's checkpoints.

Written to the output folder:
    model.safetensors   f (`encoder.*`) and p_class (`head.*`) weights and BatchNorm statistics
    config.json         format/version, the encoder and classifier configs, the class list, the
                        log-mel frontend parameters, and the ONNX file's inputs and outputs
    labels.txt          one class name per line, in output order
    model.onnx          waveform to scores in one graph: log-mel frontend + f + p_class

The ONNX graph takes `waveform` (batch, samples), float32 mono 16 kHz audio of any length
(shorter than `MIN_SAMPLES`, 0.975 s or one window, it is zero-padded to one window, as
`coincide predict` does), and returns `scores` (batch, n_windows, C) (softmax,
or a sigmoid per class for a multi-label classifier) and `embeddings` (batch, n_windows, d), one
window per second as in `coincide predict`. The STFT is part of the graph (ONNX STFT, opset 18)
through torch's dynamo-based exporter (`torch.onnx.export(dynamo=True)`, which needs the
`onnxscript` package); torch's older TorchScript exporter cannot translate the complex STFT.
After writing, the ONNX file is run with ONNX Runtime (when installed) on a test signal and
compared with PyTorch.

`coincide.load_model(OUT)` reads the folder back (the safetensors weights, not the ONNX file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from rich.console import Console
from torch import nn

from coincide.config.stage import StageSettings
from coincide.console import printable, say
from coincide.errors import UserError
from coincide.files import atomic_output, write_bytes_atomic, write_json_atomic
from coincide.media.frontend import WINDOW_SAMPLES, LogMelFrontend
from coincide.models.inference import (
    EXPORT_CONFIG_FILE,
    EXPORT_FORMAT,
    EXPORT_LABELS_FILE,
    EXPORT_VERSION,
    ONNX_FILE,
    WEIGHTS_FILE,
    SoundModel,
    load_model,
    model_config,
    model_state,
)

ONNX_OPSET = 18
MIN_SAMPLES = WINDOW_SAMPLES
# Length of the example waveform the graph is traced with and checked on (5 s).
EXAMPLE_SAMPLES = 5 * 16000


class WaveformModel(nn.Module):
    """Frontend, f and p_class in one module: what the ONNX file computes.

    forward: waveform `(batch, samples)` -> (scores `(batch, n_windows, C)`, embeddings
    `(batch, n_windows, d)`); without a classifier, embeddings only.
    """

    def __init__(self, model: SoundModel) -> None:
        super().__init__()
        self.frontend = LogMelFrontend()
        self.encoder = model.encoder
        self.classifier = model.classifier

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # Shorter than one window: zero-padded to one, as the frontend does in Python. Written
        # without a branch on the length, which the exporter would fix at trace time.
        padded = torch.cat([waveform, waveform.new_zeros(waveform.shape[0], MIN_SAMPLES)], -1)
        waveform = padded[:, : torch.sym_max(waveform.shape[-1], MIN_SAMPLES)]
        windows = self.frontend(waveform)  # (batch, n_windows, mel, frames)
        batch, n_windows, mel, frames = windows.shape
        embeddings = self.encoder(windows.reshape(batch * n_windows, 1, mel, frames))
        shaped = embeddings.reshape(batch, n_windows, -1)
        if self.classifier is None:
            return (shaped,)
        scores = self.classifier.probs(embeddings).reshape(batch, n_windows, -1)
        return scores, shaped


def output_names(model: SoundModel) -> list[str]:
    return ["embeddings"] if model.classifier is None else ["scores", "embeddings"]


def require_onnx() -> None:
    """UserError unless the packages of the ONNX export are installed."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's translator)
    except ImportError as err:
        raise UserError(
            "ONNX export needs the onnx and onnxscript packages; `pip install onnx onnxscript` "
            "or pass --no-onnx."
        ) from err


def export_onnx(model: SoundModel, path: Path) -> None:
    """Write the waveform -> scores graph of `model` to `path` (one file, weights inside)."""
    require_onnx()
    graph = WaveformModel(model).cpu().eval()
    example = torch.zeros(2, EXAMPLE_SAMPLES)
    batch = torch.export.Dim("batch")
    samples = torch.export.Dim("samples", min=1)
    torch.onnx.export(
        graph,
        (example,),
        str(path),
        dynamo=True,
        external_data=False,
        opset_version=ONNX_OPSET,
        input_names=["waveform"],
        output_names=output_names(model),
        dynamic_shapes={"waveform": {0: batch, 1: samples}},
        verbose=False,
    )
    graph.to(model.device)


def check_onnx(model: SoundModel, path: Path, seed: int = 0) -> float | None:
    """Largest |ONNX Runtime - PyTorch| over the outputs on a seeded noise waveform, or None
    when onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    waveform = np.random.default_rng(seed).normal(0, 0.1, (1, EXAMPLE_SAMPLES)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"waveform": waveform})
    graph = WaveformModel(model).cpu().eval()
    with torch.inference_mode():
        want = graph(torch.from_numpy(waveform))
    graph.to(model.device)
    return max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want, strict=True))


def export_model(model: SoundModel, out: Path, onnx: bool = True) -> dict[str, Any]:
    """Write model.safetensors, config.json, labels.txt (and model.onnx) to `out`.

    Returns the config written to config.json.
    """
    from safetensors.torch import save

    from coincide.media.frontend import frontend_parameters
    from coincide.store.media_labels import check_label

    for name in model.classes:  # one per line in labels.txt: a newline would shift them all
        check_label(name, f"the classifier of {model.source}")
    if onnx:
        require_onnx()  # before anything is written: no half-exported folder
    out.mkdir(parents=True, exist_ok=True)
    # Bytes written by open() get the user's usual file mode (safetensors' own writer makes the
    # file private), and the rename makes the write atomic.
    write_bytes_atomic(out / WEIGHTS_FILE, save(model_state(model)))
    with atomic_output(out / EXPORT_LABELS_FILE) as stream:
        stream.write("".join(f"{name}\n" for name in model.classes))
    onnx_info = None
    if onnx:
        export_onnx(model, out / ONNX_FILE)
        onnx_info = {
            "file": ONNX_FILE,
            "opset": ONNX_OPSET,
            "inputs": {"waveform": ["batch", "samples"]},
            "outputs": {
                name: ["batch", "n_windows", "classes" if name == "scores" else "embed_dim"]
                for name in output_names(model)
            },
            "sample_rate": 16000,
            "min_samples": 1,
            "padded_to": MIN_SAMPLES,
            "window": "window j covers samples [16000 j, 16000 j + 15600)",
        }
    config = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        **model_config(model),
        "frontend": frontend_parameters(),
        "onnx": onnx_info,
        "exported_from": model.identity,
    }
    write_json_atomic(out / EXPORT_CONFIG_FILE, config)
    return config


@dataclass(frozen=True)
class ExportSettings(StageSettings):
    """`coincide export`: the model (run or fine-tuning folder, or checkpoint), the output
    folder (which gets settings.json too) and whether to write the ONNX graph."""

    command: ClassVar[str] = "export"
    model: Path
    out: Path
    onnx: bool = True


def run(settings: ExportSettings, console: Console | None = None) -> int:
    """The `coincide export` command; returns 0."""
    model_path, out, onnx = settings.model, Path(settings.out), settings.onnx

    console = console or Console(stderr=True)
    model = load_model(model_path, device="cpu")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {printable(out)} is a file; give a folder for the exported model.")
    if model.classifier is None:
        say(
            console,
            f"{printable(model_path)} has no classifier: exporting the audio encoder alone "
            "(run `coincide finetune` first to export class scores).",
        )
    export_model(model, out, onnx=onnx)
    settings.write(out)
    written = [WEIGHTS_FILE, EXPORT_CONFIG_FILE, EXPORT_LABELS_FILE] + ([ONNX_FILE] if onnx else [])
    say(console, f"wrote {', '.join(written)} to {printable(out)}")
    if onnx:
        difference = check_onnx(model, out / ONNX_FILE)
        if difference is None:
            console.print("onnxruntime is not installed: the ONNX file was not checked.")
        else:
            console.print(
                f"ONNX Runtime vs PyTorch on a 5 s test signal: max |diff| {difference:.2e}"
            )
    return 0
