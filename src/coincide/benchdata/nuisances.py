"""The nuisances of each clip (`clips.csv`) and the check that they carry no class information.

A scene ties sound to picture, and that is its purpose; it must never tie either to the class.
`class_leak` asks a classifier to predict the class from a clip's nuisances alone (scene, light,
background recordings, picture background, level, digit colour) and compares its cross-validated
accuracy with the best class-blind guess, the majority class. Every benchmark reports it in
bench.json, and the tests hold it at chance (and show that it catches a deliberate leak).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import binomtest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from coincide.benchdata.plan import ClipPlan
from coincide.benchdata.render import Material

# The columns of clips.csv: a clip's split, class and every nuisance it drew, scene included.
CLIP_COLUMNS = (
    "path",
    "split",
    "label",
    "scene",
    "tint_r",
    "tint_g",
    "tint_b",
    "brightness",
    "texture",
    "backgrounds",
    "level_db",
    "colour",
)
# Fewer clips than this give a cross-validated accuracy too noisy to report.
MIN_LEAK_CLIPS = 50
# Strong L2 regularisation: with a hundred one-hot nuisances and a few hundred clips, a weakly
# regularised fit overfits to below chance and would hide a mild leak (C = 1 missed a leak in a
# third of the clips that C = 0.1 finds, on 600 demo clips).
LEAK_C = 0.1


def clip_rows(plans: list[ClipPlan], material: Material) -> list[dict[str, str]]:
    """The rows of clips.csv (`CLIP_COLUMNS`): per clip its class and every nuisance it drew.

    `scene` is -1 without a scene model; `backgrounds` joins the refs of the recordings heard,
    in order, with `;`; `texture` is the index of the picture background in the texture pool;
    `colour` is the digit colour as #rrggbb."""
    rows = []
    for plan in plans:
        refs = [material.backgrounds.sources[piece.source].ref for piece in plan.background]
        rows.append(
            {
                "path": plan.path,
                "split": plan.split,
                "label": plan.label,
                "scene": str(plan.scene),
                "tint_r": f"{plan.tint[0]:.4f}",
                "tint_g": f"{plan.tint[1]:.4f}",
                "tint_b": f"{plan.tint[2]:.4f}",
                "brightness": f"{plan.brightness:.4f}",
                "texture": str(plan.texture),
                "backgrounds": ";".join(refs),
                "level_db": f"{plan.level_db:.2f}",
                "colour": "#{:02x}{:02x}{:02x}".format(*plan.colour),
            }
        )
    return rows


def nuisance_features(rows: pd.DataFrame) -> np.ndarray:
    """The nuisances of clips.csv rows as a (clips, features) float64 matrix: one-hot scene and
    texture, multi-hot background recordings, then tint, brightness, level and colour (RGB)."""
    scene = pd.get_dummies(rows["scene"].astype(str), prefix="scene")
    texture = pd.get_dummies(rows["texture"].astype(str), prefix="texture")
    backgrounds = rows["backgrounds"].astype(str).str.get_dummies(sep=";")
    colour = rows["colour"].map(lambda c: [int(c[k : k + 2], 16) / 255 for k in (1, 3, 5)])
    continuous = np.column_stack(
        [rows[c].astype(float) for c in ("tint_r", "tint_g", "tint_b", "brightness", "level_db")]
        + [np.array(colour.tolist(), np.float64)]
    )
    return np.column_stack(
        [scene.to_numpy(float), texture.to_numpy(float), backgrounds.to_numpy(float), continuous]
    )


def class_leak(rows: pd.DataFrame, folds: int = 5, seed: int = 0) -> dict[str, float] | None:
    """How well a clip's nuisances predict its class, against chance.

    A logistic regression (`LEAK_C`) on `nuisance_features` is scored by `folds`-fold
    cross-validation;
    chance is the share of the majority class (the best guess that ignores the features), and
    `p_value` is the one-sided binomial probability of at least that many correct guesses at
    chance. None for fewer than `MIN_LEAK_CLIPS` clips or a single class.

    Returns: {"clips", "accuracy", "chance", "p_value"}.
    """
    labels = rows["label"].astype(str).to_numpy()
    if len(rows) < MIN_LEAK_CLIPS or len(set(labels)) < 2:
        return None
    model = make_pipeline(StandardScaler(), LogisticRegression(C=LEAK_C, max_iter=2000))
    predicted = cross_val_predict(
        model, nuisance_features(rows), labels, cv=KFold(folds, shuffle=True, random_state=seed)
    )
    correct = int(np.sum(predicted == labels))
    chance = float(pd.Series(labels).value_counts(normalize=True).iloc[0])
    return {
        "clips": len(rows),
        "accuracy": correct / len(rows),
        "chance": chance,
        "p_value": float(binomtest(correct, len(rows), chance, alternative="greater").pvalue),
    }
