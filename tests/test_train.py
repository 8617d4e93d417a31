"""`coincide train`: the curriculum end to end on small real stores, with the "tiny" models.

Covers: every stage runs and writes its checkpoints, logs and plots; the plateau rule; the
audio-only curriculum; a run killed with SIGKILL resumes and ends with the same weights as an
uninterrupted run; a non-finite loss stops with one clear sentence; a checkpoint alone rebuilds
models that give the same embeddings.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest.mock import ANY

import numpy as np
import pandas as pd
import pytest
import torch

from coincide.config.settings import PlateauConfig, load_config
from coincide.data.pairs import WindowTable
from coincide.errors import UserError
from coincide.stages.train import TrainSettings, run, train
from coincide.store.features import open_store
from coincide.store.writer import MediaRecord, StoreWriter
from coincide.train.checkpoint import build_models, load_checkpoint, load_models
from coincide.train.loop import _Run
from coincide.train.monitor import ClusterWatch
from coincide.train.objective import StageObjective, stage_parts
from coincide.train.optim import learning_rate
from coincide.train.plateau import Plateau
from coincide.train.triplets import stage_batch_size

torch.set_num_threads(1)

MEL, FRAMES, SIZE = 8, 12, 16
TINY = [
    "model.audio.arch=tiny",
    "model.image.arch=tiny",
    "model.audio.embed_dim=8",
    "model.image.embed_dim=8",
    "model.coincidence_hidden=16",
    "clustering.K=6",
    "data.batch_size=4",
    "data.workers=0",
    "curriculum.max_steps=4",
    "curriculum.plateau.eval_every=2",
    "optim.warmup_steps=0",
    "eval.val_pairs=4",
    "log.every=1",
    "log.checkpoint_every=2",
    "log.progress=false",
]


def make_store(path: Path, n_media: int = 10, windows: int = 6, frames: bool = True) -> Path:
    """A store of `n_media` media whose windows and frames carry a per-media pattern."""
    rng = np.random.default_rng(0)
    frontend = {"n_mels": MEL, "window_frames": FRAMES, "frame_size": SIZE}
    with StoreWriter(path, frontend, chunk_windows=20) as writer:
        for m in range(n_media):
            pattern = rng.normal(0, 2, (MEL, FRAMES)).astype(np.float32)
            logmel = pattern + rng.normal(0, 1, (windows, MEL, FRAMES)).astype(np.float32)
            pictures = None
            if frames:
                pictures = rng.integers(0, 255, (windows, SIZE, SIZE, 3), dtype=np.uint8)
                pictures[..., m % 3] = 200  # a colour per media
            writer.add(
                MediaRecord(
                    media_id=f"m{m:02d}",
                    media_path=f"/media/m{m:02d}.mp4",
                    size=1000 + m,
                    mtime_ns=m,
                    duration_s=float(windows),
                    logmel=logmel,
                    frames=pictures,
                    has_frame=np.full(windows, frames),
                    time_s=np.arange(windows, dtype=np.float64) + 0.5,
                )
            )
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("train") / "store")


def _embed(encoder: torch.nn.Module, store_path: Path) -> torch.Tensor:
    logmel = torch.from_numpy(open_store(store_path).logmel[np.arange(12)]).unsqueeze(1)
    with torch.no_grad():
        return encoder.eval()(logmel)


def test_the_curriculum_trains_every_stage_and_writes_the_run(store, tmp_path, capsys):
    cfg = load_config(["small"], TINY)
    run_dir = tmp_path / "run"
    trained = _Run(cfg, store, run_dir, torch.device("cpu"))
    trained.train()

    state = json.loads((run_dir / "state.json").read_text())
    assert state["done"] is True and state["audio_only"] is False
    assert state["finished_stages"] == ["av", "coin", "joint"]
    assert [r["steps"] for r in state["finished"]] == [4, 4, 4]
    assert load_config([str(run_dir / "config.yaml")]) == cfg
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == [
        "best.json",
        "best.pt",
        "last.prev.pt",  # the one last.pt replaced: resuming falls back to it if last is damaged
        "last.pt",
        "stage1_av.pt",
        "stage2_coin.pt",
        "stage3_joint.pt",
    ]
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (last["step"], last["stage"], last["stage_finished"]) == (12, "joint", True)
    assert last["parts"] == ["audio", "image", "aa_head", "av_head", "cluster_head"]

    log = pd.read_csv(run_dir / "train_log.csv")
    train_rows = log[log["split"] == "train"]
    assert train_rows["step"].tolist() == list(range(1, 13))
    assert train_rows["stage"].tolist() == ["av"] * 4 + ["coin"] * 4 + ["joint"] * 4
    assert train_rows[train_rows["stage"] == "av"]["aa"].isna().all()
    assert train_rows[train_rows["stage"] == "coin"][["av", "aa"]].notna().all().all()
    joint = train_rows[train_rows["stage"] == "joint"]
    assert joint["clust"].notna().all() and (joint["active_clusters"] >= 1).all()
    # The logged total is the stage's weighted sum of its terms.
    np.testing.assert_allclose(
        joint["total"], 0.81 * joint["av"] + 0.09 * joint["aa"] + 0.1 * joint["clust"], rtol=1e-5
    )
    val = log[log["split"] == "val"]
    # Held-out: the start of each stage (stage step 0), then every eval_every = 2 steps.
    assert val["stage_step"].tolist() == [0, 2, 4] * 3
    # Each term's held-out loss and each coincidence term's AUC, in [0, 1].
    assert val[val["stage"] == "coin"][["av", "aa", "auc_av", "auc_aa"]].notna().all().all()
    assert val[val["stage"] == "av"]["auc_aa"].isna().all()
    assert val["auc_av"].between(0, 1).all()
    joint_val = val[val["stage"] == "joint"]
    np.testing.assert_allclose(
        joint_val["total"],
        0.81 * joint_val["av"] + 0.09 * joint_val["aa"] + 0.1 * joint_val["clust"],
        rtol=1e-5,
    )
    # best.pt is the best held-out measurement of the last stage; each stage ended at its best
    # weights (restore_best), so the joint stage's final weights are best.pt's.
    best = json.loads((run_dir / "checkpoints" / "best.json").read_text())
    assert best["stage"] == "joint" and best["value"] == pytest.approx(joint_val["total"].min())
    best_row = joint_val.loc[joint_val["total"].idxmin()]
    assert best["step"] == 8 + best_row["stage_step"]
    best_models = load_models(run_dir / "checkpoints" / "best.pt")
    torch.testing.assert_close(
        _embed(best_models["audio"], store), _embed(trained.models["audio"], store)
    )
    for record in state["finished"]:
        stage_val = val[val["stage"] == record["name"]]
        best_step = stage_val.loc[stage_val["total"].idxmin(), "step"]
        expected = None if best_step == stage_val["step"].max() else best_step
        assert record["restored_best_step"] == expected
    for name in ("stage1_av", "stage2_coin", "stage3_joint"):
        assert (run_dir / "plots" / f"{name}.png").stat().st_size > 1000
    assert any((run_dir / "tb").iterdir())

    # A checkpoint alone rebuilds the models the run ended with.
    rebuilt = load_models(run_dir / "checkpoints" / "last.pt")
    assert not rebuilt["audio"].training
    torch.testing.assert_close(
        _embed(rebuilt["audio"], store), _embed(trained.models["audio"], store)
    )
    first = load_models(run_dir / "checkpoints" / "stage1_av.pt")
    assert not torch.allclose(_embed(first["audio"], store), _embed(rebuilt["audio"], store))

    # Running the finished run again (by default with its own config.yaml) trains nothing;
    # another model is refused.
    run(TrainSettings(store, run_dir))
    record = json.loads((run_dir / "settings.json").read_text())
    assert (record["command"], record["settings"]["run"]) == ("train", str(run_dir.absolute()))
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 12
    with pytest.raises(UserError, match="another model"):
        train(load_config(["small"], [*TINY, "model.audio.arch=small"]), store, run_dir)
    # Other loss weights are allowed on resume, and said.
    capsys.readouterr()
    train(load_config(["small"], [*TINY, "curriculum.alpha=0.5"]), store, run_dir)
    notes = [line for line in capsys.readouterr().out.splitlines() if "now weighs" in line]
    assert notes == [
        "note: stage 'coin' now weighs 0.5 L_av + 0.5 L_aa (the run started with 0.9 L_av + "
        "0.1 L_aa)",
        "note: stage 'joint' now weighs 0.45 L_av + 0.45 L_aa + 0.1 L_clust (the run started "
        "with 0.81 L_av + 0.09 L_aa + 0.1 L_clust)",
    ]


def test_a_stage_stops_when_the_held_out_loss_plateaus(store, tmp_path):
    # Every measurement after the first misses a 1000 % improvement: patience 1 ends each stage
    # at its min_steps (3, measured every step) instead of the 50-step cap.
    overrides = [
        *TINY,
        "curriculum.max_steps=50",
        "curriculum.plateau={eval_every: 1, patience: 1, rel_eps: 10.0, min_steps: 3}",
        "curriculum.stages=[av, coin]",
    ]
    train(load_config(["small"], overrides), store, tmp_path / "run")
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert [(r["name"], r["steps"]) for r in state["finished"]] == [("av", 3), ("coin", 3)]
    assert all(r["stopped"] == "plateau at stage step 3" for r in state["finished"])


def test_a_store_without_frames_runs_the_audio_only_curriculum(tmp_path):
    audio_store = make_store(tmp_path / "audio", frames=False)
    train(load_config(["small"], TINY), audio_store, tmp_path / "run")
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["audio_only"] is True
    assert state["finished_stages"] == ["aa", "aa_clust"]
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["parts"] == ["audio", "aa_head", "cluster_head"]
    with pytest.raises(UserError, match="needs frames"):
        overrides = [*TINY, "curriculum.audio_only_stages=[av]"]
        train(load_config(["small"], overrides), audio_store, tmp_path / "run2")


@pytest.mark.parametrize("row", ["row_e", "row_h", "row_i"])
def test_table1_rows_train_as_configurations(store, tmp_path, row):
    train(load_config(["small", row], TINY), store, tmp_path / "run")
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["done"] and len(state["finished"]) == 1


def test_a_batch_larger_than_the_training_media_takes_all_of_them_with_a_note(
    store, tmp_path, capsys
):
    """10 media, 2 held out: data.batch_size = 9 trains every stage on batches of the 8
    training media (one pair per media) and says so; 2 = 2 processes would keep 9 and refuse."""
    train(load_config(["small"], [*TINY, "data.batch_size=9"]), store, tmp_path / "run")
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["done"] and len(state["finished"]) == 3
    out = capsys.readouterr()
    notes = [
        line for line in (out.out + out.err).splitlines() if "fewer than data.batch_size" in line
    ]
    assert len(notes) == 3 and all("batches hold 8 pairs" in line for line in notes)


def test_stage_batch_size_keeps_the_batch_across_processes_and_for_label_triplets(store):
    table = WindowTable(open_store(store).index)
    media = np.arange(table.n_media)
    cfg = load_config(["small"], TINY)
    av = cfg.curriculum.stages[0]
    coincidence = StageObjective(cfg, av, build_models(cfg, stage_parts(av)))
    assert stage_batch_size(coincidence, table, 10.0, 64, media, world=1) == (10, ANY)
    assert stage_batch_size(coincidence, table, 10.0, 8, media, world=1) == (8, None)
    assert stage_batch_size(coincidence, table, 10.0, 64, media, world=2) == (64, None)
    assert stage_batch_size(coincidence, table, 10.0, 64, media[:1], world=1) == (64, None)


def test_too_few_media_for_any_batch_is_a_clear_error(tmp_path):
    tiny_store = make_store(tmp_path / "store", n_media=1)
    with pytest.raises(UserError, match="lower data.batch_size"):
        train(load_config(["small"], TINY), tiny_store, tmp_path / "run")


def test_compile_wraps_each_stages_step_and_checkpoints_stay_plain(store, tmp_path, monkeypatch):
    """optim.compile=true: each stage's step goes through torch.compile (static shapes); the
    checkpoints hold the plain modules' weights. (torch.compile is replaced by a recorder: a
    real CPU compilation of the training step takes minutes, see coincide.models.compiling.)"""
    compiled = []

    def record(fn, **options):
        compiled.append((type(fn).__name__, options))
        return fn

    monkeypatch.setattr(torch, "compile", record)
    run_dir = tmp_path / "run"
    train(load_config(["small"], [*TINY, "optim.compile=true"]), store, run_dir)
    assert compiled == [("StageObjective", {"dynamic": False})] * 3
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert not any("_orig_mod" in key for key in last["models"])


def test_compile_auto_leaves_the_cpu_eager(store, tmp_path, monkeypatch):
    def refuse(fn, **options):
        raise AssertionError("compiled on the CPU")

    monkeypatch.setattr(torch, "compile", refuse)
    overrides = [*TINY, "optim.compile=auto", "curriculum.stages=[av]"]
    train(load_config(["small"], overrides), store, tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "stage1_av.pt").exists()


def _train_in_child(store: Path, run_dir: Path, overrides: list[str]) -> None:
    torch.set_num_threads(1)
    train(load_config(["small"], overrides), store, run_dir)


def test_a_run_killed_with_sigkill_resumes_where_its_checkpoint_is(store, tmp_path, capsys):
    overrides = [*TINY, "curriculum.max_steps=20", "curriculum.plateau.patience=0"]
    killed = tmp_path / "killed"
    last = killed / "checkpoints" / "last.pt"
    first_stage = killed / "checkpoints" / "stage1_av.pt"
    child = multiprocessing.get_context("fork").Process(
        target=_train_in_child, args=(store, killed, overrides)
    )
    child.start()
    deadline = time.monotonic() + 120
    # The stage file is written just before last.pt: wait for both (on a loaded machine the
    # second write can take longer than the pause below).
    while not (first_stage.exists() and last.exists()) and child.is_alive():
        if time.monotonic() > deadline:
            break
        time.sleep(0.005)
    time.sleep(0.2)  # into the second stage, at no particular step
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert child.exitcode == -signal.SIGKILL
    saved = load_checkpoint(last)
    assert 20 <= saved["step"] < 60 and not json.loads((killed / "state.json").read_text())["done"]

    # The same command again continues from the checkpoint ...
    capsys.readouterr()
    train(load_config(["small"], overrides), store, killed)
    out = capsys.readouterr().out
    stage, stage_step = saved["stage"], saved["stage_step"]
    if saved["stage_finished"]:  # killed before the second stage's first checkpoint
        stage, stage_step = "coin", 0
    assert f"resuming from {last}: step {saved['step']}, stage '{stage}' at stage step " in out
    assert f"stage step {stage_step}\n" in out
    log = pd.read_csv(killed / "train_log.csv")
    assert log[log["split"] == "train"]["step"].tolist() == list(range(1, 61))  # no repeats

    # ... and ends exactly where an uninterrupted run ends (same batches, optimizer, plateau).
    straight = tmp_path / "straight"
    train(load_config(["small"], overrides), store, straight)
    resumed = load_checkpoint(last)["models"]
    reference = load_checkpoint(straight / "checkpoints" / "last.pt")["models"]
    assert resumed.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-5, atol=1e-6)


def test_a_non_finite_loss_stops_with_one_sentence_and_keeps_the_last_checkpoint(store, tmp_path):
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "coincide.cli",
        "train",
        str(run_dir),
        "--store",
        str(store),
    ]
    command += ["--config", "small"]
    for override in [*TINY, "optim.lr=1e30", "log.checkpoint_every=1"]:
        command += ["--set", override]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    assert message.startswith("error: the loss became non-finite in stage 'av' at step 2;")
    assert f"the last good checkpoint {run_dir / 'checkpoints' / 'last.pt'} (step 1) is kept" in (
        message
    )
    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert saved["step"] == 1
    assert all(torch.isfinite(t).all() for t in saved["models"].values() if t.is_floating_point())


def test_a_store_with_non_finite_features_is_named_at_train_start(tmp_path):
    # A store written before ingest checked for NaN: training must name it and its media.
    path = make_store(tmp_path / "store")
    chunk = sorted((path / "chunks").iterdir())[1]
    logmel = np.load(chunk / "logmel.npy", mmap_mode="r+")
    logmel[3, 5, 7] = np.nan
    logmel.flush()
    del logmel
    store = open_store(path)
    (bad,) = store.non_finite_media()
    assert bad == store.index["media_path"].iloc[int(store.chunk_range(1).start) + 3]
    with pytest.raises(UserError, match=r"non-finite features .* from 1 media \(/media/m"):
        train(load_config(["small"], TINY), path, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_full_disk_stops_training_with_one_sentence_and_it_resumes(store, tmp_path):
    import resource

    def limit() -> None:  # every file capped at 60 KB: the first last.pt (about 85 KB) fails
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))

    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "coincide.cli",
        "train",
        str(run_dir),
        "--store",
        str(store),
    ]
    command += ["--config", "small"]
    for override in [*TINY, "log.checkpoint_every=1"]:
        command += ["--set", override]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=300, preexec_fn=limit
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert " ".join(result.stderr.split()).startswith("error: out of disk space"), result.stderr
    assert not list((run_dir / "checkpoints").glob(".*tmp*")), "a partial checkpoint was left"
    train(load_config(["small"], [*TINY, "log.checkpoint_every=1"]), store, run_dir)
    assert json.loads((run_dir / "state.json").read_text())["done"]


def test_learning_rate_warms_up_then_holds_or_decays():
    constant = load_config(["small"], ["optim.lr=0.01", "optim.warmup_steps=4"]).optim
    assert [learning_rate(constant, 100, s) for s in (0, 1, 3, 50)] == pytest.approx(
        [0.0025, 0.005, 0.01, 0.01]
    )
    cosine = load_config(
        ["small"], ["optim.lr=0.01", "optim.warmup_steps=0", "optim.schedule=cosine"]
    )
    assert [learning_rate(cosine.optim, 100, s) for s in (0, 50, 100)] == pytest.approx(
        [0.01, 0.005, 0.0]
    )


def test_plateau_counts_relative_misses_and_respects_min_steps():
    rule = Plateau(PlateauConfig(eval_every=1, patience=2, rel_eps=0.1, min_steps=5))
    assert not rule.update(-2.0, 1)  # first measurement: best = -2
    assert not rule.update(-2.1, 2)  # 5 % better than |best|: a miss
    assert not rule.update(-2.5, 3)  # 25 % better: best = -2.5, misses reset
    assert not rule.update(-2.6, 4)  # a miss
    assert not rule.update(-2.6, 4)  # two misses, but before min_steps
    assert rule.update(-2.6, 5)
    assert rule.state_dict() == {"best": -2.5, "misses": 3}
    restored = Plateau(PlateauConfig(eval_every=1, patience=0, rel_eps=0.1, min_steps=0))
    restored.load_state_dict(rule.state_dict())
    assert (restored.best, restored.misses) == (-2.5, 3)
    assert not restored.update(0.0, 100)  # patience 0: never converges


def test_cluster_watch_reports_a_collapse_only_after_the_grace_steps():
    watch = ClusterWatch(k=100, fraction=0.1, device=torch.device("cpu"), grace_steps=20)
    collapsed_batch = torch.zeros(64, dtype=torch.long)  # every window in cluster 0
    marginal = torch.zeros(100)
    marginal[0] = 1.0

    watch.add(collapsed_batch, marginal)
    assert watch.summary(watch.counts.clone(), stage_step=20) == (1, 0.0, False)
    watch.add(collapsed_batch, marginal)
    assert watch.summary(watch.counts.clone(), stage_step=40) == (1, 0.0, True)

    spread = torch.arange(64) % 64
    watch.add(spread, torch.full((100,), 0.01))
    active, entropy, collapsed = watch.summary(watch.counts.clone(), stage_step=60)
    assert active == 64 and entropy == pytest.approx(math.log(100), rel=1e-4) and not collapsed


@pytest.mark.parametrize("mode", ["shared", "per_branch"])
def test_aa_batchnorm_sets_which_windows_share_batch_statistics(mode):

    cfg = load_config(["small"], [*TINY, f"curriculum.aa_batchnorm={mode}"])
    stage = cfg.curriculum.audio_only_stages[0]  # aa
    models = build_models(cfg, ["audio", "aa_head"])
    objective = StageObjective(cfg, stage, models).train()
    torch.manual_seed(0)
    anchors = torch.randn(4, 1, MEL, FRAMES)
    partners = torch.randn(4, 1, MEL, FRAMES) * 3 + 5  # other statistics than the anchors
    emb = objective.embed({"audio": anchors, "aa_audio": partners}, collective=False)
    alone = models["audio"](anchors)  # train mode: BatchNorm over the anchors only
    together = models["audio"](torch.cat([anchors, partners]))[:4]
    expected = alone if mode == "per_branch" else together
    torch.testing.assert_close(emb.anchor, expected)
    assert not torch.allclose(alone, together)


def test_hard_negatives_weight_training_but_the_held_out_loss_stays_equation_1():
    from coincide.losses import CoincidenceLoss
    from coincide.models.heads import CosineCoincidenceHead

    cfg = load_config(["small"], [*TINY, "curriculum.hard_negatives=2.0"])
    stage = cfg.curriculum.audio_only_stages[0]  # aa
    torch.manual_seed(0)
    models = build_models(cfg, ["audio", "aa_head"])
    # A cosine head: logits 10 cos(e1, e2) spread around 0 (a fresh MLP head's sit close
    # together), so the weights of the negatives differ.
    models["aa_head"] = CosineCoincidenceHead()
    objective = StageObjective(cfg, stage, models)
    torch.manual_seed(0)
    batch = {"audio": torch.randn(6, 1, MEL, FRAMES), "aa_audio": torch.randn(6, 1, MEL, FRAMES)}
    objective.eval()
    with torch.no_grad():
        held_out = objective(batch, collective=False)["aa"]
        emb = objective.embed(batch, collective=False)
        logits = models["aa_head"].pairwise_logits(emb.anchor, emb.aa)
    torch.testing.assert_close(held_out, CoincidenceLoss()(logits))
    assert not torch.allclose(held_out, CoincidenceLoss(2.0)(logits))
    # In training mode the term is the weighted loss (BatchNorm is kept in eval mode, so the
    # logits are the same).
    objective.terms.train()
    with torch.no_grad():
        trained = objective(batch, collective=False)["aa"]
    torch.testing.assert_close(trained, CoincidenceLoss(2.0)(logits))


def test_nproc_2_trains_in_two_gloo_processes(store, tmp_path):
    # `coincide train --nproc 2` starts torch's elastic agent in-process (no torchrun, no --).
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "coincide.cli",
        "train",
        str(run_dir),
        "--store",
        str(store),
    ]
    command += ["--config", "small", "--nproc", "2"]
    for override in [*TINY, "curriculum.max_steps=2", "log.checkpoint_every=1"]:
        command += ["--set", override]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "device cpu x 2 process(es)" in result.stdout
    state = json.loads((run_dir / "state.json").read_text())
    assert [stage["name"] for stage in state["finished"]] == ["av", "coin", "joint"]
    log = pd.read_csv(run_dir / "train_log.csv")
    assert log[log["split"] == "train"]["step"].max() == 6
    assert "Traceback" not in result.stderr


def refuse_with_rank() -> None:
    """A worker of `launch`: a user error that names the process that raised it."""
    raise UserError(f"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']} refuses.")


def test_a_user_error_in_the_launched_processes_is_one_sentence_from_rank_0() -> None:
    from coincide.train.launch import launch

    with pytest.raises(UserError) as refused:
        launch(2, "test_train:refuse_with_rank")
    assert str(refused.value) == "rank 0 of 2 refuses."
    with pytest.raises(UserError, match="--nproc 0"):
        launch(0, "test_train:refuse_with_rank")


def test_neighbour_batches_are_refreshed_from_f_through_each_stage(store, tmp_path, monkeypatch):
    """data.neighbour_batches: the neighbours are computed from f at each stage's start and
    every data.neighbour_refresh steps (not at the cap), and training runs on them."""
    import coincide.train.loop as loop_module

    calls = []
    real = loop_module.refresh_neighbours

    def record(sampler, encoder, *args):
        calls.append(sampler.batch_size)
        real(sampler, encoder, *args)
        assert sampler.neighbours is not None and sampler.neighbour_fraction == 1.0

    monkeypatch.setattr(loop_module, "refresh_neighbours", record)
    overrides = [*TINY, "data.neighbour_batches=1.0", "data.neighbour_refresh=2"]
    train(load_config(["small"], overrides), store, tmp_path / "run")
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    steps = [r["steps"] for r in state["finished"]]
    assert state["done"] and len(calls) == sum(1 + (s - 1) // 2 for s in steps)
