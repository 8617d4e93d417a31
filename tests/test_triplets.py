"""Triplet batches and loss terms of Table 1 rows a (explicit labels) and c (temporal proximity)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coincide.config.settings import load_config
from coincide.data.batches import read_batch
from coincide.data.pairs import WindowTable
from coincide.errors import UserError
from coincide.losses import TripletLoss, random_negative_indices
from coincide.store.features import open_store
from coincide.store.media_labels import merge_labels
from coincide.store.writer import store_lock
from coincide.train.checkpoint import build_models
from coincide.train.objective import StageObjective
from coincide.train.terms import LOSS_TERMS, LabelTriplet, StepEmbeddings, TemporalTriplet
from coincide.train.triplets import (
    LabelTripletSampler,
    media_label_matrix,
    objective_sampler_kind,
    stage_sampler,
    stage_validation_batches,
)
from eval_helpers import TINY, make_store

torch.set_num_threads(1)


def _labels_of(store, windows: np.ndarray) -> list[frozenset[str]]:
    index = store.index
    return [frozenset(index["labels"].iat[int(w)]) for w in windows]


def test_label_sampler_positives_share_a_label_and_the_cycle_is_disjoint(tmp_path):
    store_path = make_store(tmp_path / "s", ["a", "b", "c", "d"], 3, frames=False)
    store = open_store(store_path)
    table = WindowTable(store.index)
    labels, classes = media_label_matrix(table, store)
    assert classes == ["a", "b", "c", "d"] and labels.sum() == 12
    sampler = LabelTripletSampler(table, labels, 8, seed=0, stream=0, media=np.arange(12))
    media = store.index["media_id"].to_numpy()
    for number in range(5):
        batch = sampler.batch(number)
        anchor_labels = _labels_of(store, batch.anchors)
        positive_labels = _labels_of(store, batch.aa)
        for i in range(8):
            assert anchor_labels[i] & positive_labels[i]
            assert media[batch.anchors[i]] != media[batch.aa[i]]
            # Anchor i + 1 (cyclically) is the negative of anchor i.
            assert not anchor_labels[i] & anchor_labels[(i + 1) % 8]
    again = sampler.batch(3)
    np.testing.assert_array_equal(again.anchors, sampler.batch(3).anchors)
    assert not np.array_equal(sampler.batch(3).anchors, sampler.batch(4).anchors)


def test_label_sampler_only_uses_its_media_and_needs_two_classes(tmp_path):
    store_path = make_store(tmp_path / "s", ["a", "b", "c"], 2, frames=False)
    store = open_store(store_path)
    table = WindowTable(store.index)
    labels, _ = media_label_matrix(table, store)
    # Media codes follow sorted ids: s-a-000, s-a-001, s-b-000, s-b-001, s-c-000, s-c-001.
    sampler = LabelTripletSampler(table, labels, 4, seed=1, stream=0, media=np.arange(4))
    batch = sampler.batch(0)
    used = set(store.index["media_id"].to_numpy()[np.concatenate([batch.anchors, batch.aa])])
    assert used <= {"s-a-000", "s-a-001", "s-b-000", "s-b-001"}
    with pytest.raises(UserError, match="two classes"):
        # Class a alone: no negative can exist.
        LabelTripletSampler(table, labels, 4, seed=1, stream=0, media=np.arange(2))


def _embeddings(b: int, d: int = 4) -> StepEmbeddings:
    generator = torch.Generator().manual_seed(7)
    anchor = torch.randn(b, d, generator=generator)
    partners = torch.randn(b, d, generator=generator)
    return StepEmbeddings(anchor, partners, None, offset=0, collective=False)


def test_temporal_triplet_negative_is_another_pairs_partner():
    cfg = load_config(["small", "row_c"], TINY)
    term = TemporalTriplet(cfg)
    emb = _embeddings(6)
    torch.manual_seed(3)
    value = term(torch.nn.ModuleDict(), emb)
    torch.manual_seed(3)
    derangement = random_negative_indices(6)
    expected = TripletLoss()(emb.anchor, emb.aa, emb.aa[derangement])
    assert float(value) == pytest.approx(float(expected))
    assert LOSS_TERMS["triplet_time"] is TemporalTriplet
    assert LOSS_TERMS["triplet_label"] is LabelTriplet


def test_label_triplet_uses_the_next_anchor_and_refuses_coincidence_batches():
    cfg = load_config(["small", "row_a"], TINY)
    term = LabelTriplet(cfg)
    emb = _embeddings(5)
    with pytest.raises(RuntimeError, match="stage_sampler"):
        term(torch.nn.ModuleDict(), emb)
    term.label_batches = True
    expected = TripletLoss()(emb.anchor, emb.aa, emb.anchor[[1, 2, 3, 4, 0]])
    assert float(term(torch.nn.ModuleDict(), emb)) == pytest.approx(float(expected))


def test_stage_sampler_picks_the_label_sampler_for_row_a_only(tmp_path):
    store_path = make_store(tmp_path / "s", ["a", "b", "c", "d"], 3, frames=False)
    store = open_store(store_path)
    table = WindowTable(store.index)
    media = np.arange(table.n_media)
    samplers = {}
    for row in ("row_a", "row_c"):
        cfg = load_config(["small", row], TINY)
        stage = cfg.curriculum.audio_only_stages[0]
        objective = StageObjective(cfg, stage, build_models(cfg, ["audio"]))
        samplers[row] = stage_sampler(objective, table, store, 10.0, 4, "windows", 0, 0, media)
        val = stage_validation_batches(objective, table, store, media, 10.0, 4, 8, 0)
        assert len(val) == 2 and all(len(b.anchors) == 4 for b in val)
        if row == "row_a":
            assert objective_sampler_kind(objective) == "label"
            assert objective.terms["triplet_label"].label_batches
            # One training step through the stage objective gives a finite loss.
            losses = objective(read_batch(store, samplers[row].batch(0)), collective=False)
            assert torch.isfinite(losses["total"])
    assert isinstance(samplers["row_a"], LabelTripletSampler)
    assert not isinstance(samplers["row_c"], LabelTripletSampler)


def test_label_sampler_reports_classes_that_always_occur_together(tmp_path):
    store_path = make_store(tmp_path / "s", ["a", "b"], 2, frames=False)
    with store_lock(store_path):
        merge_labels(store_path, {m: ["a", "b"] for m in open_store(store_path).labels})
    store = open_store(store_path)
    table = WindowTable(store.index)
    labels, _ = media_label_matrix(table, store)
    sampler = LabelTripletSampler(table, labels, 4, seed=0, stream=0, media=np.arange(4))
    with pytest.raises(UserError, match="shares no class with the previous anchor"):
        sampler.batch(0)
