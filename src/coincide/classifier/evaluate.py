"""Scoring a fine-tuned classifier on a labeled test store (paper 4.2): window scores
p_class(f(x)) averaged over each clip's windows, clip-level mAP and d' over the test classes.
A test class the classifier never saw gets a constant score (it was never labeled: the cost of
missing a class)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from coincide.errors import UserError
from coincide.evaluation.metrics import (
    clip_scores,
    labels_to_matrix,
    mean_average_precision,
    mean_d_prime,
    per_class_average_precision,
)
from coincide.models.embed_store import DEFAULT_BATCH_SIZE, score_windows
from coincide.store.features import FeatureStore

if TYPE_CHECKING:
    from coincide.classifier.train import Classifier


def evaluate_classifier(
    model: Classifier,
    test_store: FeatureStore,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | None = None,
    test_labels: list[list[str]] | None = None,
    test_embeddings: np.ndarray | None = None,
) -> dict[str, Any]:
    """Clip-level mAP and d' of the classifier on a labeled test store (paper 4.2).

    Window scores are averaged over each clip (`metrics.clip_scores`); the classes scored are
    the test labels' classes, and a class the classifier has no output for scores 0 everywhere.

    Args:
        test_labels: one label list per test window (the clip's labels); None reads the store's.
        test_embeddings: `(n, d)` f(x) of the test windows under the classifier's f, when f
            was not trained (`model.encoder_steps == 0`): only p_class runs then.

    Returns:
        {"mAP", "per_class_ap" (class -> AP, None without a positive clip), "d_prime",
        "test_clips", "test_classes", "untrained_classes"}.
    """
    device = device or next(model.parameters()).device
    window_labels = test_labels if test_labels is not None else list(test_store.index["labels"])
    test_classes = sorted({c for names in window_labels for c in names})
    if not test_classes:
        raise UserError(
            f"test store {test_store.root} has no labels, so the classifier cannot be scored; "
            "attach labels with `coincide add-labels`."
        )
    if test_embeddings is not None and model.encoder_steps == 0:
        with torch.no_grad():
            rows = torch.from_numpy(np.array(test_embeddings, dtype=np.float32)).to(device)
            window_scores = model.head.probs(rows).float().cpu().numpy()
    else:
        window_scores = score_windows(model.encoder, model.head, test_store, batch_size, device)
    column = {name: c for c, name in enumerate(model.classes)}
    scores = np.zeros((len(window_scores), len(test_classes)), dtype=np.float32)
    for t, name in enumerate(test_classes):
        if name in column:
            scores[:, t] = window_scores[:, column[name]]
    clip_ids = test_store.index["media_id"].to_numpy()
    clips, per_clip = clip_scores(scores, clip_ids)
    first_window = {clip: i for i, clip in reversed(list(enumerate(clip_ids)))}
    truth, _ = labels_to_matrix([window_labels[first_window[c]] for c in clips], test_classes)
    per_class = per_class_average_precision(truth, per_clip)
    return {
        "mAP": mean_average_precision(truth, per_clip),
        "per_class_ap": {
            name: None if np.isnan(ap) else float(ap)
            for name, ap in zip(test_classes, per_class, strict=True)
        },
        "d_prime": mean_d_prime(truth, per_clip),
        "test_clips": int(len(clips)),
        "test_classes": len(test_classes),
        "untrained_classes": [c for c in test_classes if c not in column],
    }
