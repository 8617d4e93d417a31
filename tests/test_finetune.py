"""The classifier: targets, each strategy's start and labels, training, clip-level scoring."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from coincide.classifier import train as finetune_stage
from coincide.classifier.fit import is_multilabel, target_matrix
from coincide.classifier.train import (
    FinetuneConfig,
    TrainingSet,
    evaluate_classifier,
    finetune_strategy,
    load_classifier,
    starting_encoder,
)
from coincide.cli.commands import app
from coincide.errors import UserError
from coincide.store.features import open_store
from coincide.train.checkpoint import load_models

sys.path.insert(0, str(Path(__file__).parent))
from consolidation_helpers import balanced_clips, make_run, make_store  # noqa: E402

torch.set_num_threads(1)

FAST = FinetuneConfig(
    steps=4, batch_size=8, progress=False, checkpoint_every=2, eval_every=2, patience=2
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    train = make_store(root / "train", balanced_clips(["a", "b", "c"], 8), windows_per_clip=4)
    test = make_store(root / "test", balanced_clips(["a", "b", "c"], 4), windows_per_clip=4, seed=1)
    # Not seed 0: an untrained run made with the fine-tuning seed would equal the fresh f.
    checkpoint = make_run(root / "run", seed=123)
    return root, open_store(train), open_store(test), checkpoint


def test_targets_single_and_multi_label():
    labels = [["b"], ["a", "c"], ["c"]]
    classes = ["a", "b", "c"]
    np.testing.assert_array_equal(
        target_matrix(labels, classes, multilabel=True), [[0, 1, 0], [1, 0, 1], [0, 0, 1]]
    )
    np.testing.assert_array_equal(
        target_matrix(labels, classes, multilabel=False), [[0, 1, 0], [0.5, 0, 0.5], [0, 0, 1]]
    )
    assert is_multilabel(labels, None) and not is_multilabel([["a"], ["b"]], None)
    assert not is_multilabel(labels, False)


def test_labeled_windows_drop_rows_without_labels():
    frame = pd.DataFrame(
        {"window_index": [3, 5, 9], "labels": [["a"], [], ["b", "c"]], "cluster_id": [7, 7, 2]}
    )
    labeled = TrainingSet.from_frame(frame)
    assert labeled.windows.tolist() == [3, 9] and labeled.labels == [["a"], ["b", "c"]]
    assert labeled.groups is None  # validation holds out media files
    by_cluster = TrainingSet.from_frame(frame, by_cluster=True)
    assert by_cluster.groups.tolist() == [7, 2]  # ... or the answered clusters
    assert by_cluster.fingerprint() != labeled.fingerprint()
    assert TrainingSet.from_window_labels([[], ["x"], []]).windows.tolist() == [1]


def test_strategies_start_from_the_curriculum_or_from_scratch(workspace):
    _, _, _, checkpoint = workspace
    curriculum = load_models(checkpoint)["audio"].state_dict()
    pretrained = starting_encoder("random-pretrained", checkpoint, seed=0).state_dict()
    scratch = starting_encoder("random-scratch", checkpoint, seed=0).state_dict()
    for name, value in curriculum.items():
        torch.testing.assert_close(pretrained[name], value)
    weights = [n for n in curriculum if n.endswith("weight")]
    assert any(not torch.equal(scratch[n], curriculum[n]) for n in weights)
    assert scratch.keys() == curriculum.keys()


@pytest.mark.parametrize("strategy", ["cluster", "random-scratch", "random-pretrained", "all"])
def test_each_strategy_trains_and_writes_metrics(workspace, strategy):
    root, train, test, checkpoint = workspace
    labels = list(train.index["labels"])
    labeled = (
        TrainingSet.from_window_labels(labels)
        if strategy == "all"
        else TrainingSet(np.array([0, 4, 8, 50]), [labels[i] for i in (0, 4, 8, 50)])
    )
    out = root / "ft" / strategy
    metrics = finetune_strategy(strategy, checkpoint, train, labeled, out, FAST, test)
    assert metrics["labeled_windows"] == len(labeled.windows)
    assert metrics["classes"] == sorted({c for names in labeled.labels for c in names})
    assert 0.0 <= metrics["mAP"] <= 1.0 and metrics["test_clips"] == 12
    per_class = metrics["per_class_ap"]
    assert sorted(per_class) == ["a", "b", "c"]  # every test class, trained or not
    assert np.mean(list(per_class.values())) == pytest.approx(metrics["mAP"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["mAP"] == metrics["mAP"] and saved["strategy"] == strategy
    payload = torch.load(out / "checkpoint.pt", weights_only=False)
    # Early stopping picked the steps (at most FAST.steps), then trained that many on all labels.
    assert payload["step"] == payload["selected"]["steps"] == metrics["steps"] <= FAST.steps
    assert payload["stage"] == "finetune"
    assert payload["selected"]["validation_windows"] > 0
    if strategy in ("random-scratch", "all"):
        assert metrics["head_steps"] == 0  # no warm start for a fresh f
    model = load_classifier(out / "checkpoint.pt", torch.device("cpu"))
    assert model.classes == metrics["classes"]


def test_a_finished_run_is_not_redone_and_a_foreign_checkpoint_is_refused(workspace):
    root, train, test, checkpoint = workspace
    labeled = TrainingSet(np.array([0, 40]), [["a"], ["b"]])
    out = root / "ft" / "reuse"
    finetune_strategy("cluster", checkpoint, train, labeled, out, FAST, test)
    stamp = (out / "checkpoint.pt").stat().st_mtime_ns
    finetune_strategy("cluster", checkpoint, train, labeled, out, FAST, test)
    assert (out / "checkpoint.pt").stat().st_mtime_ns == stamp
    other = TrainingSet(np.array([1, 41]), [["a"], ["b"]])
    with pytest.raises(UserError, match="other fine-tuning settings"):
        finetune_strategy("cluster", checkpoint, train, other, out, FAST, test)


def test_a_stopped_run_resumes_to_the_same_weights(workspace):
    root, train, _, checkpoint = workspace
    labeled = TrainingSet(np.array([0, 4, 8, 40, 44, 80]), [["a"], ["b"], ["c"]] * 2)
    # Fixed steps: the checkpoints belong to the final training (step selection is redone).
    cfg = FinetuneConfig(
        steps=4,
        batch_size=4,
        progress=False,
        checkpoint_every=2,
        cache_windows=0,
        log_every=1,
        early_stop=False,
    )
    cpu = torch.device("cpu")

    class CountingStore:
        """The training store, counting batch reads; optionally stopping the process at one."""

        def __init__(self, stop_at=None):
            self.reads, self.stop_at = 0, stop_at
            self.logmel = self

        def __getitem__(self, key):
            self.reads += 1
            if self.reads == self.stop_at:
                raise KeyboardInterrupt
            return train.logmel[key]

    settings = {"test": "resume"}
    out = root / "ft/stop"
    with pytest.raises(KeyboardInterrupt):
        finetune_stage.train_classifier(
            load_models(checkpoint)["audio"], CountingStore(3), labeled, out, cfg, settings, cpu
        )
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 2
    rest = CountingStore()
    resumed = finetune_stage.train_classifier(
        load_models(checkpoint)["audio"], rest, labeled, out, cfg, settings, cpu
    )
    assert rest.reads == 2  # steps 3 and 4 only
    straight = finetune_stage.train_classifier(
        load_models(checkpoint)["audio"], train, labeled, root / "ft/straight", cfg, settings, cpu
    )
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value)
    # The loss curve of the stopped-and-resumed run is the straight run's, each step once.
    stopped_log = pd.read_csv(out / "train_log.csv")
    straight_log = pd.read_csv(root / "ft/straight/train_log.csv")
    assert stopped_log["step"].tolist() == straight_log["step"].tolist() == [1, 2, 3, 4]
    np.testing.assert_allclose(stopped_log["total"], straight_log["total"], rtol=1e-6)


def test_finetune_writes_its_loss_curve_as_train_does(workspace):
    root, train, _, checkpoint = workspace
    labeled = TrainingSet(np.array([0, 4, 8, 40, 44, 80]), [["a"], ["b"], ["c"]] * 2)
    cpu = torch.device("cpu")
    curves = {}
    for every in (1, 2):
        cfg = FinetuneConfig(steps=4, batch_size=4, progress=False, log_every=every)
        out = root / f"ft/curve{every}"
        finetune_stage.train_classifier(
            load_models(checkpoint)["audio"], train, labeled, out, cfg, {"curve": 1}, cpu
        )
        curves[every] = pd.read_csv(out / "train_log.csv")
        assert (out / "plots" / "stage1_finetune.png").read_bytes()[:4] == b"\x89PNG"
        assert any((out / "tb").iterdir())
    every_step, every_other = curves[1], curves[2]
    assert every_step["step"].tolist() == [1, 2, 3, 4]
    assert set(every_step["stage"]) == {"finetune"} and set(every_step["split"]) == {"train"}
    assert (every_step["lr"] == 3e-4).all() and (every_step["pairs_per_s"] > 0).all()
    # A row every 2 steps is the mean of the two steps' losses (the same seeded run).
    assert every_other["step"].tolist() == [2, 4]
    pairs = every_step["total"].to_numpy().reshape(2, 2).mean(axis=1)
    np.testing.assert_allclose(every_other["total"], pairs, rtol=1e-6)


def test_training_on_all_labels_learns_the_classes(workspace):
    root, train, test, checkpoint = workspace
    labeled = TrainingSet.from_window_labels(list(train.index["labels"]))
    cfg = FinetuneConfig(steps=30, batch_size=16, lr=3e-3, progress=False)
    metrics = finetune_strategy("all", checkpoint, train, labeled, root / "ft/learn", cfg, test)
    assert metrics["multilabel"] is False
    assert metrics["mAP"] > 0.9  # chance is 1/3 for three balanced classes


def test_multi_label_store_trains_a_sigmoid_classifier(tmp_path):
    clips = [["a"], ["b"], ["a", "b"], ["c"], ["a", "c"], ["b", "c"]] * 3
    train = open_store(make_store(tmp_path / "train", clips, windows_per_clip=3))
    test = open_store(make_store(tmp_path / "test", clips[:6], windows_per_clip=3, seed=2))
    checkpoint = make_run(tmp_path / "run")
    labeled = TrainingSet.from_window_labels(list(train.index["labels"]))
    metrics = finetune_strategy("all", checkpoint, train, labeled, tmp_path / "ft", FAST, test)
    assert metrics["multilabel"] is True and metrics["test_classes"] == 3
    model = load_classifier(tmp_path / "ft/checkpoint.pt", torch.device("cpu"))
    with torch.no_grad():
        scores = model.head.probs(model.encoder(torch.from_numpy(test.logmel[:4]).unsqueeze(1)))
    assert not torch.allclose(scores.sum(1), torch.ones(4))  # sigmoids, not a softmax


def test_a_test_class_never_trained_scores_constant(workspace):
    root, train, test, checkpoint = workspace
    labeled = TrainingSet(np.array([0, 4]), [["a"], ["b"]])  # class "c" never labeled
    model = finetune_stage.train_classifier(
        load_models(checkpoint)["audio"],
        train,
        labeled,
        root / "ft/missing",
        FAST,
        {"test": "missing"},
        torch.device("cpu"),
    )
    metrics = evaluate_classifier(model, test, device=torch.device("cpu"))
    assert metrics["untrained_classes"] == ["c"] and metrics["test_classes"] == 3


def test_cli_cluster_label_finetune(workspace):
    root, train, test, _ = workspace
    run = root / "cli_run"
    make_run(run, num_clusters=6, centres_from=train.root)
    runner = CliRunner()
    steps = ["--steps", "3", "--batch-size", "4"]
    commands = [
        ["cluster", str(run), "--store", str(train.root)],
        ["label", str(run), "--store", str(train.root), "--budget", "3", "--oracle", "store"],
        ["label", str(run), "--store", str(train.root), "--budget", "3", "--oracle", "store"]
        + ["--strategy", "random"],
        ["finetune", str(run), "--store", str(train.root), "--test-store", str(test.root), *steps],
        ["finetune", str(run), "--store", str(train.root), "--strategy", "random-scratch", *steps],
    ]
    for command in commands:
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
    metrics = json.loads((run / "finetune/cluster-cluster/metrics.json").read_text())
    assert metrics["session"] == "cluster" and metrics["budget"] == 3
    assert (run / "finetune/random-scratch-random/checkpoint.pt").is_file()
    wrong = runner.invoke(
        app, ["finetune", str(run), "--store", str(train.root), "--session", "random"]
    )
    assert isinstance(wrong.exception, UserError)
