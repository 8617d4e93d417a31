"""Held-out selection: the overfitting watch, best.pt and which checkpoint commands use."""

from __future__ import annotations

import json

import pytest
import torch

from coincide.config.settings import load_config
from coincide.errors import UserError
from coincide.stages.train import train
from coincide.train.checkpoint import load_checkpoint, run_checkpoint
from coincide.train.validation import Overfitting, overfitting_message
from test_train import TINY, make_store


def test_overfitting_needs_rising_held_out_and_falling_training_loss_in_a_row():
    watch = Overfitting(evaluations=3)
    assert watch.update(0, 1.0, 1.40) is None
    assert watch.update(50, 0.9, 1.41) is None
    assert watch.update(100, 0.8, 1.39) is None  # held-out fell once: the run resets
    assert watch.update(150, 0.7, 1.45) is None
    assert watch.update(200, 0.6, 1.50) is None
    evidence = watch.update(250, 0.5, 1.60)
    assert evidence == {
        "from_step": 100,
        "to_step": 250,
        "train_from": 0.8,
        "train_to": 0.5,
        "held_out_from": 1.39,
        "held_out_to": 1.6,
        "best_held_out": 1.39,
    }
    assert watch.update(300, 0.4, 1.70) is None  # said once per stage
    message = overfitting_message("joint", evidence)
    assert "1.390 -> 1.600" in message and "0.800 -> 0.500" in message
    assert "augmentation" in message


def test_both_falling_is_not_overfitting():
    watch = Overfitting(evaluations=2)
    for step, value in enumerate([1.4, 1.3, 1.2, 1.1]):
        assert watch.update(step, 1.0 - step / 10, value) is None
    assert watch.reported is None


def test_commands_use_best_by_default_and_last_on_request(tmp_path, capsys):
    store = make_store(tmp_path / "store")
    run_dir = tmp_path / "run"
    train(load_config(["small"], [*TINY, "curriculum.stages=[av]"]), store, run_dir)
    capsys.readouterr()
    best = run_checkpoint(run_dir)
    assert best == run_dir / "checkpoints" / "best.pt"
    err = capsys.readouterr().err
    assert "using" in err and "best.pt (best held-out loss" in err and "stage 'av'" in err
    assert run_checkpoint(run_dir, "last") == run_dir / "checkpoints" / "last.pt"
    info = json.loads((run_dir / "checkpoints" / "best.json").read_text())
    assert load_checkpoint(best)["step"] == info["step"]
    assert load_checkpoint(best)["optimizer"] == {}  # nothing resumes from best.pt
    # A run from before best.pt: last.pt, said so.
    (run_dir / "checkpoints" / "best.pt").unlink()
    assert run_checkpoint(run_dir) == run_dir / "checkpoints" / "last.pt"
    assert "has no best.pt" in capsys.readouterr().err
    with pytest.raises(UserError, match="train it first"):
        run_checkpoint(tmp_path / "nothing")


def test_a_stage_ends_at_its_best_weights_unless_restore_best_is_off(tmp_path):
    store = make_store(tmp_path / "store")
    # A learning rate this high makes every step worse on held-out media: the best weights are
    # the stage's start (step 0), the last ones are 4 steps away from them.
    overrides = [*TINY, "curriculum.stages=[av]", "optim.lr=0.3"]
    restored, kept = tmp_path / "restored", tmp_path / "kept"
    train(load_config(["small"], overrides), store, restored)
    train(load_config(["small"], [*overrides, "curriculum.restore_best=false"]), store, kept)
    info = json.loads((restored / "checkpoints" / "best.json").read_text())
    assert (info["step"], info["stage_step"]) == (0, 0)
    state = json.loads((restored / "state.json").read_text())
    assert state["finished"][0]["restored_best_step"] == 0
    assert (
        json.loads((kept / "state.json").read_text())["finished"][0]["restored_best_step"] is None
    )

    best = load_checkpoint(restored / "checkpoints" / "best.pt")["models"]
    last_restored = load_checkpoint(restored / "checkpoints" / "last.pt")["models"]
    last_kept = load_checkpoint(kept / "checkpoints" / "last.pt")["models"]
    for key, value in best.items():
        torch.testing.assert_close(last_restored[key], value)
    moved = [
        k for k in best if best[k].is_floating_point() and not torch.equal(best[k], last_kept[k])
    ]
    assert moved  # without restore_best the stage ends at its last weights
