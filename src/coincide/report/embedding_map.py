"""The 2-D map of f(x) in the report: projecting embeddings (PCA or t-SNE) and drawing them
coloured by class."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from coincide.config.choices import PROJECTIONS, Projection
from coincide.errors import UserError
from coincide.report.plots import literal, pyplot

NO_LABEL = "(no label)"


def project_2d(embeddings: np.ndarray, projection: Projection = "pca", seed: int = 0) -> np.ndarray:
    """Map `(n, d)` embeddings to `(n, 2)` points for a picture.

    The embeddings are length-normalised first: f(x) is compared by cosine similarity
    everywhere else (p_clust, QbE), so directions, not lengths, are what the map should show.
    `pca`: the two leading principal components (under a second for 3000 windows). `tsne`:
    t-SNE (scikit-learn, PCA start, perplexity at most 30), which keeps neighbourhoods but
    takes about a minute for 3000 windows on 2 cores.
    """
    if projection not in PROJECTIONS:  # the command line checks it; this is a caller's typo
        raise ValueError(f"projection {projection!r} is not one of {PROJECTIONS}")
    unit = np.asarray(embeddings, dtype=np.float64)
    unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    n = len(unit)
    if n < 3:
        raise UserError(f"a 2-D map needs at least 3 windows, the sample has {n}.")
    if projection == "pca":
        from sklearn.decomposition import PCA

        points = PCA(n_components=min(2, unit.shape[1]), random_state=seed).fit_transform(unit)
        if points.shape[1] == 1:  # a 1-D embedding: draw it on a line
            points = np.column_stack([points[:, 0], np.zeros(n)])
        return points
    from sklearn.manifold import TSNE

    perplexity = min(30.0, (n - 1) / 3)
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(
        unit
    )


def first_labels(window_labels: list[list[str]]) -> list[str]:
    """The first label of each window's clip, NO_LABEL for a window without labels."""
    return [str(labels[0]) if len(labels) else NO_LABEL for labels in window_labels]


def plot_map(points: np.ndarray, classes: list[str], title: str, path: Path) -> list[str]:
    """Scatter the points coloured by class (unlabeled in grey, underneath); returns the
    classes in legend order."""
    names = sorted(set(classes) - {NO_LABEL})
    classes_arr = np.asarray(classes, dtype=object)
    markers = "o^sDv<>P"
    with pyplot() as plt:
        colours = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
        period = 10 if len(names) <= 10 else 20
        columns = 1 + len(names) // 25
        fig, ax = plt.subplots(figsize=(6.5 + 1.8 * columns, 5.5))
        unlabeled = classes_arr == NO_LABEL
        if unlabeled.any():
            ax.scatter(*points[unlabeled].T, s=5, color="#bbbbbb", label=NO_LABEL)
        for i, name in enumerate(names):
            mine = classes_arr == name
            ax.scatter(
                *points[mine].T,
                s=8,
                color=colours(i % period),
                marker=markers[(i // period) % len(markers)],
                alpha=0.8,
                label=literal(name),
            )
        ax.set_title(literal(title))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize="small",
            ncol=columns,
            markerscale=2,
            frameon=False,
        )
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return ([NO_LABEL] if unlabeled.any() else []) + names
