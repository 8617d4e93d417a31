"""`coincide reproduce table2`: the paper's clustering table (Table 3 is
`coincide.experiments.table3`).

Table 2 (clustering and the labels it propagates), one row per clustering:
    K, active clusters, V-measure, labeled (clusters asked), label recall, label precision
A row's clustering is a run's p_clust (RUN, one per K: the paper trains p_clust for each
K; `--head-steps N` adds the head trained N more steps on the frozen embeddings), or k-means
with K centres on a run's frozen embeddings: at the head's K for every head row (the head
against k-means on the same embeddings, side by side), and at `--clusters K1,K2,...`. The `source`
column says which. V-measure needs one class per window, so it is computed over the windows
whose clip has exactly one label (the `vm_windows` column counts them).

Clusterings already made from the same checkpoint are reused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd

from coincide.config.choices import ClusterOrder
from coincide.config.stage import StageSettings
from coincide.errors import UserError
from coincide.evaluation.metrics import v_measure
from coincide.experiments.table3_report import cell
from coincide.labeling.clusters import Clustering, ClusterMembers
from coincide.labeling.oracle import WindowLabelOracle, answer_with_oracle, oracle_window_labels
from coincide.labeling.select import MemberChoice
from coincide.labeling.sessions import cluster_plan, extend_session, label_quality, session_labels
from coincide.stages.cluster import (
    ClusterSettings,
    default_checkpoint,
    ensure_clustering,
    store_embeddings,
)
from coincide.store.features import FeatureStore, open_store
from coincide.store.labels import InMemoryLabelStore, LabelStore

# The paper's budgets are 37% of K for K = 1K and 10K (370 and 3,700 labels).
PAPER_BUDGET_FRACTION = 0.37


# ---------------------------------------------------------------------------------------------
# Table 2


@dataclass(frozen=True)
class ClusteringSource:
    """Where a Table 2 row's clustering comes from: a run's p_clust, or k-means with `k`
    centres on a run's frozen embeddings."""

    run: Path
    method: Literal["head", "kmeans"] = "head"
    k: int | None = None
    head_steps: int = 0

    def describe(self) -> str:
        """The `source` cell: `p_clust (RUN)`, `p_clust +N steps (RUN)` or
        `k-means (RUN embeddings)`."""
        if self.method == "head":
            longer = f" +{self.head_steps} steps" if self.head_steps else ""
            return f"p_clust{longer} ({self.run.name})"
        return f"k-means ({self.run.name} embeddings)"


def vm_over_single_label(
    window_labels: Sequence[Sequence[str]], assignment: np.ndarray
) -> tuple[float, int]:
    """V-measure of a clustering over the windows with exactly one label.

    Returns:
        `(v_measure, windows_scored)`; NaN when no window has exactly one label.
    """
    single = np.array([len(labels) == 1 for labels in window_labels])
    if not single.any():
        return math.nan, 0
    truth = np.array(
        [labels[0] for labels, keep in zip(window_labels, single, strict=True) if keep]
    )
    return v_measure(truth, np.asarray(assignment)[single]), int(single.sum())


def clustering_label_quality(
    clustering: Clustering,
    window_labels: Sequence[Sequence[str]],
    budget: int,
    order: ClusterOrder = "random",
    member: MemberChoice = "random",
    seed: int = 0,
    label_store: LabelStore | None = None,
    embeddings: np.ndarray | None = None,
) -> dict[str, Any]:
    """Simulate cluster labeling with budget N on one clustering and score the labels it
    propagates (the right half of Table 2), through the same session code as `coincide label`;
    `embeddings` `(n, d)` serve the medoid member.

    Returns:
        {"labeled": requests asked, "labeled_windows", "recall", "precision"}.
    """
    label_store = label_store or InMemoryLabelStore()
    plan = cluster_plan(clustering, order, member, seed)
    name = f"table2-{clustering.name}-{plan.fingerprint}-seed{seed}"
    session = label_store.get_session(name)
    if session is None:
        label_store.create_session(name, "", "", plan.strategy, plan.seed, plan.params())
        session = label_store.get_session(name)
        assert session is not None
    members = ClusterMembers(clustering.assignment)
    requests = extend_session(label_store, session, budget, clustering, embeddings, members)
    answer_with_oracle(label_store, session, requests, WindowLabelOracle(window_labels))
    propagated = session_labels(label_store, session, len(requests), members)
    precision, recall = label_quality(propagated, window_labels)
    return {
        "labeled": len(requests),
        "labeled_windows": len(propagated),
        "recall": recall,
        "precision": precision,
    }


def table2(
    sources: Sequence[ClusteringSource],
    store: FeatureStore,
    window_labels: Sequence[Sequence[str]],
    budgets: Sequence[int] | None = None,
    budget_fraction: float = PAPER_BUDGET_FRACTION,
    order: ClusterOrder = "random",
    member: MemberChoice = "random",
    seed: int = 0,
) -> pd.DataFrame:
    """The rows of Table 2, one per clustering source.

    Args:
        sources: the clusterings (computed when missing, reused when made already).
        store: the store clustered and labeled; window_labels: its `n` window label lists.
        budgets: clusters to label per row (one value, or one per source); None labels
            min(active, round(budget_fraction * K)) clusters.
    """
    if budgets is not None and len(budgets) not in (1, len(sources)):
        raise UserError(
            f"--budget has {len(budgets)} values for {len(sources)} table rows; give one value "
            "or one per row."
        )
    rows = []
    for i, source in enumerate(sources):
        checkpoint = default_checkpoint(source.run)
        clustering = ensure_clustering(
            ClusterSettings(
                source.run,
                store.root,
                source.method,
                source.k,
                checkpoint,
                seed=seed,
                head_steps=source.head_steps,
            ),
            store,
        )
        if budgets is None:
            budget = min(
                clustering.active, max(1, round(budget_fraction * clustering.num_clusters))
            )
        else:
            budget = budgets[0] if len(budgets) == 1 else budgets[i]
        vm, vm_windows = vm_over_single_label(window_labels, clustering.assignment)
        embeddings = store_embeddings(source.run, store, checkpoint)
        quality = clustering_label_quality(
            clustering, window_labels, budget, order, member, seed, None, embeddings
        )
        rows.append(
            {
                "source": source.describe(),
                "run": source.run.name,
                "method": clustering.name,
                "K": clustering.num_clusters,
                "active": clustering.active,
                "VM": vm,
                "vm_windows": vm_windows,
                **quality,
            }
        )
    return pd.DataFrame(rows)


def table2_markdown(rows: pd.DataFrame) -> str:
    """Table 2 in the paper's layout (plus the source of each row)."""
    lines = [
        "| Source | K | # Active | VM | # Labeled | Windows labeled | Recall | Precision |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows.itertuples():
        lines.append(
            f"| {row.source} | {row.K:,} | {row.active:,} | {cell(row.VM)} | {row.labeled:,} | "
            f"{row.labeled_windows:,} | {cell(row.recall)} | {cell(row.precision)} |"
        )
    return "\n".join(lines) + "\n"


def head_against_kmeans(rows: pd.DataFrame) -> str:
    """Each head row next to k-means at the same K on the same run's embeddings (markdown);
    empty when the table has no such pair."""
    lines = [
        "| Run | K | Clustering | # Active | VM | Recall | Precision |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    pairs = 0
    for run in dict.fromkeys(rows["run"]):
        mine = rows[rows["run"] == run]
        heads = mine[mine["method"].str.startswith("head")]
        for k in dict.fromkeys(heads["K"]):
            kmeans = mine[mine["method"] == f"kmeans-{k}"]
            for row in [*heads[heads["K"] == k].itertuples(), *kmeans.itertuples()]:
                lines.append(
                    f"| {row.run} | {row.K:,} | {row.method} | {row.active:,} | "
                    f"{cell(row.VM)} | {cell(row.recall)} | {cell(row.precision)} |"
                )
            pairs += len(kmeans)
    return "\n".join(lines) + "\n" if pairs else ""


@dataclass(frozen=True)
class Table2Settings(StageSettings):
    """What `coincide reproduce table2` runs; kept in DIR/settings.json.

    Rows for each run's p_clust (and the same head trained `head_steps` more steps), k-means at
    the head's K on the same run's embeddings (`kmeans_at_head_k`), then k-means at each
    `kmeans_k` on the first run's embeddings; `budgets` (one, or one per row) or
    `budget_fraction` of K labels per row, asked in `order` through `member`, answered by
    `oracle`.
    """

    command: ClassVar[str] = "reproduce table2"
    runs: tuple[Path, ...]
    store: Path
    out: Path
    oracle: str = "store"
    kmeans_k: tuple[int, ...] = ()
    budgets: tuple[int, ...] | None = None
    budget_fraction: float = PAPER_BUDGET_FRACTION
    order: ClusterOrder = "random"
    member: MemberChoice = "random"
    seed: int = 0
    head_steps: tuple[int, ...] = ()
    kmeans_at_head_k: bool = True


def run_table2(settings: Table2Settings) -> pd.DataFrame:
    """`coincide reproduce table2`: the rows of `settings`; writes DIR/table2.csv, DIR/table2.md
    and DIR/settings.json and prints the table."""
    runs, oracle, order = settings.runs, settings.oracle, settings.order
    member, seed = settings.member, settings.seed
    if not runs:
        raise UserError("give at least one RUN (a trained run folder).")
    for run_dir in runs:
        if not Path(run_dir).is_dir():
            raise UserError(f"run folder {run_dir} does not exist; train it first.")
    if any(n < 1 for n in settings.head_steps):
        raise UserError("--head-steps takes positive step counts, e.g. 500,2000.")
    store = open_store(settings.store)
    window_labels = oracle_window_labels(store, oracle)
    sources: list[ClusteringSource] = []
    for run_dir in map(Path, runs):
        head = _head_source(run_dir)
        if head is None:
            continue
        sources.append(head)
        sources += [ClusteringSource(run_dir, "head", None, n) for n in settings.head_steps]
        if settings.kmeans_at_head_k:
            sources.append(ClusteringSource(run_dir, "kmeans", _head_k(run_dir)))
    sources += [ClusteringSource(Path(runs[0]), "kmeans", k) for k in settings.kmeans_k]
    sources = list(dict.fromkeys(sources))
    if not sources:
        raise UserError(
            "none of the runs has a cluster head; add k-means rows with --clusters K1,K2,... ."
        )
    rows = table2(
        sources,
        store,
        window_labels,
        settings.budgets,
        settings.budget_fraction,
        order,
        member,
        seed,
    )
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    settings.write(out)
    rows.to_csv(out / "table2.csv", index=False)
    markdown = table2_markdown(rows)
    versus = head_against_kmeans(rows)
    (out / "table2.md").write_text(
        "# Table 2: clustering and cluster-based label quality\n\n"
        f"Store `{store.root}`, {len(store)} windows; oracle `{oracle}`; cluster order "
        f"{order}, member {member}, seed {seed}. VM over windows with one label.\n\n"
        + markdown
        + (f"\n## The head against k-means at the same K\n\n{versus}" if versus else ""),
        encoding="utf-8",
    )
    print(markdown)
    if versus:
        print("The head against k-means at the same K, on the same embeddings:\n")
        print(versus)
    return rows


def _head_k(run_dir: Path) -> int:
    """K of the run's p_clust (from its checkpoint)."""
    from coincide.train.checkpoint import load_checkpoint

    return int(load_checkpoint(default_checkpoint(run_dir))["config"]["clustering"]["K"])


def _head_source(run_dir: Path) -> ClusteringSource | None:
    """A p_clust source for a run whose checkpoint has a cluster head, else None."""
    from coincide.train.checkpoint import load_checkpoint

    parts = load_checkpoint(default_checkpoint(run_dir))["parts"]
    return ClusteringSource(run_dir, "head") if "cluster_head" in parts else None
