"""TensorBoard is an optional extra: with it a run writes RUN/tb event files holding the logged
scalars; without it (its import made to fail here) a run still writes RUN/train_log.csv and the
stage plots, and says once how to get TensorBoard logs."""

from __future__ import annotations

import sys

import pandas as pd
import pytest
import torch

from coincide.config.settings import load_config
from coincide.run_folder import LOG_FILE, TB_DIR
from coincide.train.loop import _Run
from coincide.train.monitor import NO_TENSORBOARD, Monitor
from test_train import TINY, make_store

torch.set_num_threads(1)


@pytest.fixture
def no_tensorboard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Imports of TensorBoard fail as they do where the package is not installed (a None in
    sys.modules makes `import` raise ModuleNotFoundError, even after an earlier import)."""
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    # The note is printed once per process; each test starts as a fresh process would.
    monkeypatch.setattr("coincide.train.monitor._TOLD_NO_TENSORBOARD", False)


def _log_two_steps(monitor: Monitor) -> None:
    monitor.log_train(1, "av", 1, {"total": 0.75, "av": 0.75}, 1e-3, 100.0, None)
    monitor.log_train(2, "av", 2, {"total": 0.5, "av": 0.5}, 1e-3, 120.0, None)
    monitor.close()


def test_with_tensorboard_the_scalars_go_to_event_files_and_the_csv(tmp_path, capsys):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    monitor = Monitor(tmp_path, ["total", "av"], resume_step=0, progress=False)
    assert monitor.writer is not None
    _log_two_steps(monitor)

    events = event_accumulator.EventAccumulator(str(tmp_path / TB_DIR))
    events.Reload()
    scalars = [(e.step, e.value) for e in events.Scalars("loss/av")]
    assert scalars == [(1, 0.75), (2, 0.5)]
    assert pd.read_csv(tmp_path / LOG_FILE)["av"].tolist() == [0.75, 0.5]
    assert "TensorBoard" not in capsys.readouterr().out


def test_without_tensorboard_the_monitor_logs_the_csv_and_says_so_once(
    tmp_path, capsys, no_tensorboard
):
    monitor = Monitor(tmp_path, ["total", "av"], resume_step=0, progress=False)
    assert monitor.writer is None  # the QbE probe then logs to its CSV only
    _log_two_steps(monitor)

    out = capsys.readouterr().out
    assert out.count("TensorBoard is not installed") == 1
    assert " ".join(NO_TENSORBOARD.split()) in " ".join(out.split())
    assert pd.read_csv(tmp_path / LOG_FILE)["av"].tolist() == [0.75, 0.5]
    assert not (tmp_path / TB_DIR).exists()
    # A second run in the same process (Table 3 trains many classifiers) does not repeat it.
    (tmp_path / "second").mkdir()
    _log_two_steps(Monitor(tmp_path / "second", ["total", "av"], resume_step=0, progress=False))
    assert "TensorBoard is not installed" not in capsys.readouterr().out


def test_a_run_without_tensorboard_writes_its_csv_curves_and_plots(
    tmp_path, capsys, no_tensorboard
):
    store = make_store(tmp_path / "store")
    run_dir = tmp_path / "run"
    cfg = load_config(["small"], [*TINY, "curriculum.max_steps=2"])
    _Run(cfg, store, run_dir, torch.device("cpu")).train()

    log = pd.read_csv(run_dir / LOG_FILE)
    assert log[log["split"] == "train"]["step"].tolist() == list(range(1, 7))
    assert log["total"].notna().all()
    for name in ("stage1_av", "stage2_coin", "stage3_joint"):
        assert (run_dir / "plots" / f"{name}.png").stat().st_size > 1000
    assert not (run_dir / TB_DIR).exists()
    assert capsys.readouterr().out.count("TensorBoard is not installed") == 1
