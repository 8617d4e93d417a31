"""Early stopping on held-out media, the warm-started p_class, and L_class on partial labels:
each checked against numbers worked out by hand or a direct computation."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from coincide.classifier.fit import (
    LabelTargets,
    StepSelector,
    batch_positions,
    classifier_loss,
    fit_head,
    group_split,
    select_steps,
    validation_measure,
)
from coincide.classifier.train import (
    Classifier,
    FinetuneConfig,
    TrainingSet,
    evaluate_classifier,
    train_classifier,
)
from coincide.losses import ClassificationLoss
from coincide.models.heads import ClassifierHead
from coincide.store.features import open_store
from coincide.train.checkpoint import load_models

sys.path.insert(0, str(Path(__file__).parent))
from consolidation_helpers import balanced_clips, make_run, make_store  # noqa: E402

torch.set_num_threads(1)


def test_media_split_keeps_each_file_on_one_side():
    media = np.array(["a", "a", "b", "c", "c", "c", "d", "e"])
    train, validation = group_split(media, 0.4, seed=3)
    assert sorted(np.concatenate([train, validation]).tolist()) == list(range(8))
    held = set(media[validation])
    assert len(held) == 2  # round(0.4 * 5 files)
    assert not held & set(media[train])
    # At least one file is held out, never all of them; one file cannot be split.
    assert len(set(media[group_split(media, 0.01, 0)[1]])) == 1
    assert len(set(media[group_split(media, 0.99, 0)[0]])) == 1
    assert group_split(np.array(["x", "x"]), 0.5, 0)[1].size == 0


def test_media_split_never_holds_out_a_class_that_training_would_lack():
    media = np.array(["a", "b", "c", "d", "e", "f"])
    labels = [["dog"], ["dog"], ["cat"], ["bird"], ["bird"], ["dog", "cat"]]
    for seed in range(20):
        train, validation = group_split(media, 0.5, seed, labels)
        trained = {c for i in train for c in labels[i]}
        assert all(c in trained for i in validation for c in labels[i])
        assert len(validation) >= 1
    # Only singleton classes: nothing can be held out.
    assert group_split(media[:3], 0.5, 0, [["x"], ["y"], ["z"]])[1].size == 0


def test_batches_use_a_small_set_whole_and_draw_a_large_one():
    assert sorted(batch_positions(5, 8, seed=0, step=3).tolist()) == [0, 1, 2, 3, 4]
    drawn = batch_positions(100, 8, seed=0, step=3)
    assert len(drawn) == 8 and drawn.max() < 100
    np.testing.assert_array_equal(drawn, batch_positions(100, 8, seed=0, step=3))


def test_closed_labels_give_the_classification_loss():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    for multilabel in (False, True):
        targets = LabelTargets.build([["a"], ["a", "c"]], ["a", "b", "c"], multilabel)
        expected = ClassificationLoss(multilabel)(logits, targets.positive)
        torch.testing.assert_close(classifier_loss(logits, targets), expected)


def test_partial_single_label_loss_by_hand():
    # Row 0: positive "a" (closed). Row 1: only "not b" is known: -log(1 - p_b).
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    targets = LabelTargets.build(
        [["a"], []], ["a", "b", "c"], False, negatives=[[], ["b"]], closed=np.array([True, False])
    )
    p0 = math.exp(1) / (math.exp(1) + 2)
    p1_b = math.exp(2) / (math.exp(2) + 2)
    expected = (-math.log(p0) - math.log(1 - p1_b)) / 2
    assert float(classifier_loss(logits, targets)) == pytest.approx(expected, rel=1e-5)


def test_partial_multi_label_loss_counts_only_known_classes():
    logits = torch.tensor([[1.0, -1.0, 0.5], [0.3, 2.0, -0.2]])
    # Row 0 closed ("a" present, b and c absent); row 1 open: "b" present, "c" absent, "a" unknown.
    targets = LabelTargets.build(
        [["a"], ["b"]], ["a", "b", "c"], True, negatives=[[], ["c"]], closed=np.array([True, False])
    )
    bce = F.binary_cross_entropy_with_logits
    row0 = bce(logits[0], torch.tensor([1.0, 0.0, 0.0]), reduction="sum")
    row1 = bce(logits[1, 1:], torch.tensor([1.0, 0.0]), reduction="sum")
    assert float(classifier_loss(logits, targets)) == pytest.approx(float(row0 + row1) / 2)


def test_step_selection_stops_after_patience_and_returns_the_best_step():
    # (loss, mAP) measured at steps 0, 2, 4, ...: the score decides, the loss breaks ties.
    measures = iter([(5.0, 0.2), (4.0, 0.5), (4.5, 0.7), (3.0, 0.7), (3.5, 0.6), (2.0, 0.65)])
    steps_taken = []
    best = select_steps(steps_taken.append, lambda: next(measures), 100, eval_every=2, patience=2)
    # Best at step 6 (score 0.7 tied, lower loss); steps 8 and 10 are not better: stop.
    assert best == 6 and len(steps_taken) == 10
    # Fresh weights are no candidate: the first measurement is at eval_every.
    measures = iter([(1.0, 0.9), (2.0, 0.5), (2.0, 0.5)])
    fresh = select_steps(lambda s: 0.0, lambda: next(measures), 100, 2, 2, from_start=False)
    assert fresh == 2
    selector = StepSelector(patience=1, min_delta=0.1)
    selector.measure(0, 1.0)
    selector.measure(5, 0.95)  # no score: less than 10 % lower loss is not better
    assert selector.best_step == 0 and selector.stop


def test_validation_measure_is_the_loss_and_the_label_ranking_of_the_scores():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 2.0], [1.0, 0.5, 0.0]])
    targets = LabelTargets.build([["a"], ["b"], ["b"]], ["a", "b", "c"], False)
    loss, score = validation_measure(logits, targets)
    assert loss == pytest.approx(float(F.cross_entropy(logits, torch.tensor([0, 1, 1]))))
    # The true class ranks 1st, 2nd and 2nd: reciprocal ranks 1, 1/2, 1/2.
    assert score == pytest.approx((1 + 0.5 + 0.5) / 3)
    # One window is enough to tell a better ranking from a worse one.
    one, good = targets.rows([1]), torch.tensor([[0.0, 2.0, 1.0]])
    assert validation_measure(good, one)[1] == pytest.approx(1.0)
    assert validation_measure(-good, one)[1] == pytest.approx(1 / 3)


def test_fit_head_learns_and_keeps_its_best_validation_step():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (3, 8))
    classes = rng.integers(3, size=90)
    x = torch.tensor(centres[classes] + rng.normal(0, 1, (90, 8)), dtype=torch.float32)
    labels = [[str(c)] for c in classes]
    targets = LabelTargets.build(labels, ["0", "1", "2"], False)
    torch.manual_seed(0)
    head = ClassifierHead(8, 3)
    train, held = np.arange(60), np.arange(60, 90)
    steps = fit_head(
        head, x[train], targets.rows(train), 200, 1e-2, 0.0, (x[held], targets.rows(held))
    )
    assert 0 < steps <= 200
    with torch.no_grad():
        accuracy = (head(x[held]).argmax(1).numpy() == classes[held]).mean()
    assert accuracy > 0.9


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit")
    train = make_store(root / "train", balanced_clips(["a", "b", "c"], 8), windows_per_clip=4)
    test = make_store(root / "test", balanced_clips(["a", "b", "c"], 3), windows_per_clip=4, seed=1)
    checkpoint = make_run(root / "run", seed=5)
    return root, open_store(train), open_store(test), checkpoint


def test_the_final_classifier_is_trained_on_every_label(workspace):
    """With the chosen steps at 0 (patience 1, max 1 step), the result is the warm-started
    p_class fitted on all labeled windows, not on the training split: the same weights as
    fitting it directly."""
    root, train, _, checkpoint = workspace
    labels = list(train.index["labels"])
    windows = np.arange(0, 96, 3)
    labeled = TrainingSet(windows, [labels[i] for i in windows])
    encoder = load_models(checkpoint)["audio"].eval()
    with torch.no_grad():
        frozen = encoder(torch.from_numpy(train.logmel[windows]).unsqueeze(1)).numpy()
    cfg = FinetuneConfig(steps=1, eval_every=1, patience=1, head_steps=50, progress=False)
    model = train_classifier(
        encoder, train, labeled, root / "all", cfg, {"t": 1}, torch.device("cpu"), frozen
    )
    chosen = model.selected
    assert chosen["validation_windows"] > 0 and chosen["steps"] in (0, 1)
    if chosen["steps"] == 0:
        torch.manual_seed(cfg.seed)
        head = ClassifierHead(encoder.config.embed_dim, 3)
        targets = LabelTargets.build(labeled.labels, ["a", "b", "c"], False)
        fit_head(head, torch.from_numpy(frozen), targets, chosen["head_steps"], 1e-2, 1e-4)
        for name, value in head.state_dict().items():
            torch.testing.assert_close(model.head.state_dict()[name], value)


def test_an_untrained_f_is_scored_from_the_cached_test_embeddings(workspace):
    _, _, test, checkpoint = workspace
    encoder = load_models(checkpoint)["audio"].eval()
    torch.manual_seed(0)
    model = Classifier(encoder, ClassifierHead(encoder.config.embed_dim, 3), ["a", "b", "c"])
    model.eval()
    with torch.no_grad():
        cached = encoder(torch.from_numpy(test.logmel[:]).unsqueeze(1)).numpy()
    cpu = torch.device("cpu")
    direct = evaluate_classifier(model, test, device=cpu)
    assert evaluate_classifier(model, test, device=cpu, test_embeddings=cached)["mAP"] == (
        pytest.approx(direct["mAP"], abs=1e-6)
    )
    # Scores from the cache (all-zero embeddings: every clip scores the same) ...
    assert evaluate_classifier(model, test, device=cpu, test_embeddings=cached * 0)["mAP"] != (
        pytest.approx(direct["mAP"], abs=1e-3)
    )
    # ... but not once f was trained: its embeddings changed.
    model.encoder_steps = 3
    moved = evaluate_classifier(model, test, device=cpu, test_embeddings=cached * 0)
    assert moved["mAP"] == pytest.approx(direct["mAP"], abs=1e-6)
