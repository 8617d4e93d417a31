"""`coincide export`: safetensors + config + labels round-trip, and ONNX Runtime vs PyTorch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from coincide.cli.commands import app
from coincide.errors import UserError
from coincide.media.decode import decode_audio
from coincide.models.inference import load_model
from coincide.stages.export import MIN_SAMPLES, ExportSettings
from coincide.stages.export import run as run_export
from inference_helpers import DATA, RECORDINGS, TinyRun, make_tiny_run, quiet

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return make_tiny_run(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def exported(tiny: TinyRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "model"
    result = CliRunner().invoke(app, ["export", str(tiny.run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "ONNX Runtime vs PyTorch" in result.output
    return out


def test_the_folder_holds_weights_config_and_labels(tiny: TinyRun, exported: Path) -> None:
    model = load_model(tiny.run, device="cpu")
    config = json.loads((exported / "config.json").read_text(encoding="utf-8"))
    assert config["format"] == "coincide-export"
    assert config["classes"] == model.classes == ["fire", "noise", "speech", "tone"]
    assert config["encoder"]["arch"] == "tiny" and config["encoder"]["embed_dim"] == 128
    assert config["classifier"] == {
        "embed_dim": 128,
        "num_classes": 4,
        "multilabel": False,
        "hidden": 0,
    }
    assert config["frontend"]["n_mels"] == 64 and config["frontend"]["sample_rate"] == 16000
    assert config["onnx"]["min_samples"] == 1 and config["onnx"]["padded_to"] == MIN_SAMPLES
    labels = (exported / "labels.txt").read_text(encoding="utf-8").splitlines()
    assert labels == model.classes
    tensors = load_file(str(exported / "model.safetensors"))
    assert {k.split(".")[0] for k in tensors} == {"encoder", "head"}
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(tensors[f"encoder.{key}"], value)


def test_load_model_reads_the_exported_folder(tiny: TinyRun, exported: Path) -> None:
    original = load_model(tiny.run, device="cpu")
    reloaded = load_model(exported, device="cpu")
    assert reloaded.classes == original.classes
    assert reloaded.home == exported
    waveform = decode_audio(tiny.media / "4-164661-A-12.flac")
    np.testing.assert_array_equal(
        reloaded.predict(waveform).window_scores, original.predict(waveform).window_scores
    )
    np.testing.assert_array_equal(reloaded.embed(waveform), original.embed(waveform))


@pytest.mark.parametrize("name", list(RECORDINGS))
def test_onnx_runtime_agrees_with_pytorch_on_real_recordings(
    tiny: TinyRun, exported: Path, name: str
) -> None:
    model = load_model(tiny.run, device="cpu")
    waveform = decode_audio(DATA / name)
    session = onnxruntime.InferenceSession(
        str(exported / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    scores, embeddings = session.run(["scores", "embeddings"], {"waveform": waveform[None]})
    window_scores, _, _ = model.predict(waveform, 16000)
    assert scores.shape == (1, *window_scores.shape)
    np.testing.assert_allclose(scores[0], window_scores, atol=1e-4, rtol=0)
    np.testing.assert_allclose(embeddings[0], model.embed(waveform, 16000), atol=1e-4, rtol=0)


def test_onnx_pads_audio_shorter_than_one_window_as_predict_does(
    tiny: TinyRun, exported: Path
) -> None:
    model = load_model(tiny.run, device="cpu")
    short = decode_audio(DATA / "9_theo_16.wav")[: MIN_SAMPLES // 2]
    session = onnxruntime.InferenceSession(
        str(exported / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    scores, embeddings = session.run(["scores", "embeddings"], {"waveform": short[None]})
    assert scores.shape == (1, 1, 4)  # was (1, 0, 4): no window at all
    np.testing.assert_allclose(scores[0], model.predict(short).window_scores, atol=1e-4, rtol=0)
    np.testing.assert_allclose(embeddings[0], model.embed(short), atol=1e-4, rtol=0)


def test_onnx_takes_a_batch_of_waveforms(tiny: TinyRun, exported: Path) -> None:
    model = load_model(tiny.run, device="cpu")
    fire = decode_audio(DATA / "4-164661-A-12.flac")
    batch = np.stack([fire[: 3 * 16000], fire[16000 : 4 * 16000]])
    session = onnxruntime.InferenceSession(
        str(exported / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (scores, _) = session.run(None, {"waveform": batch})
    assert scores.shape == (2, 3, 4)
    for row, waveform in zip(scores, batch, strict=True):
        np.testing.assert_allclose(row, model.predict(waveform).window_scores, atol=1e-4, rtol=0)


def test_a_run_without_classifier_exports_its_encoder(tiny: TinyRun, tmp_path: Path) -> None:
    out = tmp_path / "encoder"
    console = quiet()
    assert (
        run_export(
            ExportSettings(tiny.run / "checkpoints" / "last.pt", out, onnx=False), console=console
        )
        == 0
    )
    assert "has no classifier" in console.file.getvalue()
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    record = json.loads((out / "settings.json").read_text(encoding="utf-8"))
    assert record["command"] == "export" and record["settings"]["onnx"] is False
    assert config["classifier"] is None and config["classes"] == [] and config["onnx"] is None
    assert not (out / "model.onnx").exists()
    reloaded = load_model(out, device="cpu")
    waveform = decode_audio(tiny.media / "noise0.wav")
    original = load_model(tiny.run / "checkpoints" / "last.pt", device="cpu")
    np.testing.assert_array_equal(reloaded.embed(waveform), original.embed(waveform))
    with pytest.raises(UserError, match="coincide finetune"):
        reloaded.predict(waveform)
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(UserError, match="is a file"):
        run_export(ExportSettings(tiny.run, tmp_path / "file", onnx=False), console=quiet())


def test_a_class_name_with_a_newline_is_refused(tiny: TinyRun, tmp_path: Path) -> None:
    # A checkpoint from before labels were checked: labels.txt would get one line too many.
    from coincide.stages.export import export_model

    model = load_model(tiny.run, device="cpu")
    model.classes = ["fire", "noi\nse", "speech", "tone"]
    with pytest.raises(UserError, match="control character"):
        export_model(model, tmp_path / "out", onnx=False)
    assert not (tmp_path / "out").exists()


def test_without_the_onnx_packages_nothing_is_written(
    tiny: TinyRun, tmp_path: Path, monkeypatch
) -> None:
    from coincide.stages.export import export_model

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    model = load_model(tiny.run, device="cpu")
    with pytest.raises(UserError, match="pass --no-onnx"):
        export_model(model, tmp_path / "out", onnx=True)
    assert not (tmp_path / "out").exists()
