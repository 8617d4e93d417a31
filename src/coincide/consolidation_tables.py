"""`coincide reproduce table2` and `table3`: the paper's clustering and classifier tables.

Table 2 (clustering and the labels it propagates), one row per clustering:
    K, active clusters, V-measure, labeled (clusters asked), label recall, label precision
A row's clustering is a run's p_clust (RUN, one per K: the paper trains p_clust for each K)
or k-means with K centres on a run's frozen embeddings (`--clusters K1,K2,...`), as `source`
says. V-measure needs one class per window: it is computed over the windows whose clip has
exactly one label (the `vm_windows` column counts them).

Table 3 (classifiers), for each budget N and each strategy:
    random (from scratch), random (pretrained), cluster labeling; plus the topline (all labels)
with the number of windows that end up labeled, clip-level mAP and d' on a test store, a PNG of
mAP against budget (log x axis), and the label-efficiency figures of SPEC section 3: the mAP
ratio at each budget, and the ratio of random to cluster budget needed for the same mAP
(interpolated linearly in mAP against log budget).

Both commands resume: clusterings, labeling sessions (DIR/labels.sqlite) and fine-tuned
classifiers (DIR/runs/<strategy>-<budget>/) already made with the same settings are reused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from coincide.cluster import Clustering, ClusterMembers, default_checkpoint, ensure_clustering
from coincide.errors import UserError
from coincide.finetune import FinetuneConfig, LabeledWindows, finetune_strategy
from coincide.label import (
    MemberChoice,
    Order,
    SessionPlan,
    WindowLabelOracle,
    answer_with_oracle,
    cluster_plan,
    extend_session,
    label_quality,
    open_session,
    oracle_window_labels,
    session_labels,
)
from coincide.metrics import v_measure
from coincide.store.features import FeatureStore, open_store
from coincide.store.labels import InMemoryLabelStore, LabelStore, SQLiteLabelStore

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

    def describe(self) -> str:
        """The `source` cell: `p_clust (RUN)` or `k-means (RUN embeddings)`."""
        if self.method == "head":
            return f"p_clust ({self.run.name})"
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
    order: Order = "random",
    member: MemberChoice = "random",
    seed: int = 0,
    label_store: LabelStore | None = None,
) -> dict[str, Any]:
    """Simulate cluster labeling with budget N on one clustering and score the labels it
    propagates (the right half of Table 2), through the same session code as `coincide label`.

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
    requests = extend_session(label_store, session, budget, clustering, None, members)
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
    order: Order = "random",
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
            source.run, store, source.method, source.k, checkpoint, seed=seed
        )
        if budgets is None:
            budget = min(
                clustering.active, max(1, round(budget_fraction * clustering.num_clusters))
            )
        else:
            budget = budgets[0] if len(budgets) == 1 else budgets[i]
        vm, vm_windows = vm_over_single_label(window_labels, clustering.assignment)
        quality = clustering_label_quality(clustering, window_labels, budget, order, member, seed)
        rows.append(
            {
                "source": source.describe(),
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
            f"| {row.source} | {row.K:,} | {row.active:,} | {_cell(row.VM)} | {row.labeled:,} | "
            f"{row.labeled_windows:,} | {_cell(row.recall)} | {_cell(row.precision)} |"
        )
    return "\n".join(lines) + "\n"


def _cell(value: float, digits: int = 3) -> str:
    # NaN is undefined (n/a); d' of a perfectly separated class is +inf, shown as such.
    if value is None or np.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}" if np.isfinite(value) else str(value)


def run_table2(
    runs: Sequence[Path],
    store_path: Path,
    out: Path,
    oracle: str = "store",
    kmeans_k: Sequence[int] = (),
    budgets: Sequence[int] | None = None,
    budget_fraction: float = PAPER_BUDGET_FRACTION,
    order: Order = "random",
    member: MemberChoice = "random",
    seed: int = 0,
) -> pd.DataFrame:
    """`coincide reproduce table2`: rows for each run's p_clust, then k-means at each K on the
    first run's embeddings; writes DIR/table2.csv and DIR/table2.md and prints the table."""
    if not runs:
        raise UserError("give at least one RUN (a trained run folder).")
    for run_dir in runs:
        if not Path(run_dir).is_dir():
            raise UserError(f"run folder {run_dir} does not exist; train it first.")
    store = open_store(store_path)
    window_labels = oracle_window_labels(store, oracle)
    heads = [s for s in (_head_source(Path(r)) for r in runs) if s is not None]
    sources = heads + [ClusteringSource(Path(runs[0]), "kmeans", k) for k in kmeans_k]
    if not sources:
        raise UserError(
            "none of the runs has a cluster head; add k-means rows with --clusters K1,K2,... ."
        )
    rows = table2(sources, store, window_labels, budgets, budget_fraction, order, member, seed)
    out.mkdir(parents=True, exist_ok=True)
    rows.to_csv(out / "table2.csv", index=False)
    markdown = table2_markdown(rows)
    (out / "table2.md").write_text(
        "# Table 2: clustering and cluster-based label quality\n\n"
        f"Store `{store.root}`, {len(store)} windows; oracle `{oracle}`; cluster order "
        f"{order}, member {member}, seed {seed}. VM over windows with one label.\n\n" + markdown,
        encoding="utf-8",
    )
    print(markdown)
    return rows


def _head_source(run_dir: Path) -> ClusteringSource | None:
    """A p_clust source for a run whose checkpoint has a cluster head, else None."""
    from coincide.train.checkpoint import load_checkpoint

    parts = load_checkpoint(default_checkpoint(run_dir))["parts"]
    return ClusteringSource(run_dir, "head") if "cluster_head" in parts else None


# ---------------------------------------------------------------------------------------------
# Table 3: label efficiency


def budget_to_reach(
    budgets: Sequence[float], maps: Sequence[float], target: float
) -> tuple[float, str]:
    """The budget at which an mAP-vs-budget curve first reaches `target`, interpolating mAP
    linearly in log budget between measured points.

    Args:
        budgets: ascending budgets; maps: the mAP measured at each.

    Returns:
        `(budget, bound)`: bound "=" (interpolated), "<=" (already reached at the smallest
        budget, so the budget is at most that) or ">" (never reached: more than the largest).
    """
    if not budgets:
        raise ValueError("the curve has no points")
    if maps[0] >= target:
        return float(budgets[0]), "<="
    for (b0, m0), (b1, m1) in zip(
        zip(budgets[:-1], maps[:-1], strict=True),
        zip(budgets[1:], maps[1:], strict=True),
        strict=True,
    ):
        if target == m1:
            return float(b1), "="
        if m0 < target < m1:
            fraction = (target - m0) / (m1 - m0)
            return float(math.exp(math.log(b0) + fraction * (math.log(b1) - math.log(b0)))), "="
    return float(budgets[-1]), ">"


def label_efficiency(rows: pd.DataFrame, reference: str, against: str = "cluster") -> pd.DataFrame:
    """Label-efficiency figures of `against` (cluster labeling) over `reference` (a random
    strategy), SPEC section 3.

    Args:
        rows: Table 3 rows (columns strategy, budget, mAP).

    Returns:
        One row per budget of `against`: budget, its mAP, the reference's mAP at that budget,
        `map_ratio` (against / reference), and `budget_ratio` with `bound`: the reference's
        budget to reach the same mAP divided by this budget ("=", or a bound "<=" / ">").
    """
    ours = rows[rows["strategy"] == against].sort_values("budget")
    theirs = rows[rows["strategy"] == reference].sort_values("budget")
    their_map = dict(zip(theirs["budget"], theirs["mAP"], strict=True))
    result = []
    for budget, value in zip(ours["budget"], ours["mAP"], strict=True):
        needed, bound = budget_to_reach(list(theirs["budget"]), list(theirs["mAP"]), value)
        reference_map = their_map.get(budget, math.nan)
        result.append(
            {
                "budget": int(budget),
                "mAP": value,
                "reference_mAP": reference_map,
                "map_ratio": value / reference_map if reference_map else math.nan,
                "budget_ratio": needed / budget,
                "bound": bound,
            }
        )
    return pd.DataFrame(result)


# ---------------------------------------------------------------------------------------------
# Table 3: running the strategies


STRATEGY_TITLES = {
    "all": "Complete (topline)",
    "random-scratch": "Random (from scratch)",
    "random-pretrained": "Random (pretrained f)",
    "cluster": "Cluster",
}


def table3(
    run_dir: Path,
    train_store: FeatureStore,
    test_store: FeatureStore,
    budgets: Sequence[int],
    out: Path,
    window_labels: Sequence[Sequence[str]],
    test_labels: Sequence[Sequence[str]],
    cfg: FinetuneConfig,
    method: Literal["head", "kmeans"] = "head",
    k: int | None = None,
    order: Order = "random",
    member: MemberChoice = "random",
    seed: int = 0,
    topline: bool = True,
) -> pd.DataFrame:
    """Label, fine-tune and evaluate every (budget, strategy) of Table 3; rows already done
    with the same settings are read back, not redone.

    Returns:
        Rows: strategy, budget (labels asked), examples (windows with labels), mAP, d_prime.
    """
    budgets = sorted(set(budgets))
    if not budgets or budgets[0] < 1:
        raise UserError("--budget must list positive label budgets, e.g. 10,20,50,100.")
    checkpoint = default_checkpoint(run_dir)
    clustering = ensure_clustering(run_dir, train_store, method, k, checkpoint, seed=seed)
    members = ClusterMembers(clustering.assignment)
    oracle = WindowLabelOracle(window_labels)
    out.mkdir(parents=True, exist_ok=True)

    # Both labeling sessions, extended once to the largest budget (answers committed as given).
    with SQLiteLabelStore(out / "labels.sqlite") as label_store:
        cluster_session = open_session(
            label_store,
            f"cluster-{clustering.name}-seed{seed}",
            run_dir,
            train_store,
            cluster_plan(clustering, order, member, seed),
        )
        random_session = open_session(
            label_store,
            f"random-seed{seed}",
            run_dir,
            train_store,
            SessionPlan(strategy="random", seed=seed, windows=len(train_store)),
        )
        for session, grouping in ((cluster_session, clustering), (random_session, None)):
            requests = extend_session(label_store, session, budgets[-1], grouping, None, members)
            answer_with_oracle(label_store, session, requests, oracle)
        labels_at = {
            (strategy, budget): session_labels(
                label_store, session, budget, members if strategy == "cluster" else None
            )
            for budget in budgets
            for strategy, session in (("cluster", cluster_session), ("random", random_session))
        }
        asked = {
            (strategy, budget): min(budget, len(label_store.requests(session.id)))
            for budget in budgets
            for strategy, session in (("cluster", cluster_session), ("random", random_session))
        }

    # One fine-tuned classifier per (strategy, budget), evaluated on the test store.
    rows = []
    plan = [
        (strategy, budget)
        for budget in budgets
        for strategy in ("random-scratch", "random-pretrained", "cluster")
    ]
    done: set[tuple[str, int]] = set()
    for index, (strategy, budget) in enumerate(plan, 1):
        source = "cluster" if strategy == "cluster" else "random"
        if (strategy, asked[(source, budget)]) in done:
            # A budget past the number of active clusters asks every cluster once: the same
            # labels as the row already trained, so one row stands for both.
            print(
                f"table3: {strategy} budget {budget} asks the same {asked[(source, budget)]} "
                "labels as a smaller budget (every active cluster); not trained twice",
                flush=True,
            )
            continue
        done.add((strategy, asked[(source, budget)]))
        labeled = LabeledWindows.from_frame(labels_at[(source, budget)])
        row = {
            "strategy": strategy,
            "budget": asked[(source, budget)],
            "examples": len(labeled.windows),
        }
        if len(labeled.windows) == 0:
            # Every answer was a skip: no classifier can be trained, the row says so.
            rows.append({**row, "mAP": math.nan, "d_prime": math.nan})
            continue
        metrics = finetune_strategy(
            strategy,
            checkpoint,
            train_store,
            labeled,
            out / "runs" / f"{strategy}-{budget}",
            cfg,
            test_store,
            list(test_labels),
            extra={"budget": asked[(source, budget)], "clustering": clustering.name},
        )
        rows.append({**row, "mAP": metrics["mAP"], "d_prime": metrics["d_prime"]})
        print(
            f"table3 row {index}/{len(plan) + int(topline)}: {strategy}, budget "
            f"{row['budget']}, {row['examples']} labeled windows -> clip mAP "
            f"{metrics['mAP']:.3f}, d' {metrics['d_prime']:.2f}",
            flush=True,
        )
    if topline:
        labeled = LabeledWindows.from_window_labels([list(x) for x in window_labels])
        metrics = finetune_strategy(
            "all",
            checkpoint,
            train_store,
            labeled,
            out / "runs" / "topline",
            cfg,
            test_store,
            list(test_labels),
        )
        rows.append(
            {
                "strategy": "all",
                "budget": len(labeled.windows),
                "examples": len(labeled.windows),
                "mAP": metrics["mAP"],
                "d_prime": metrics["d_prime"],
            }
        )
    return pd.DataFrame(rows)


def table3_markdown(rows: pd.DataFrame, clustering: str) -> str:
    """Table 3 in the paper's layout: strategy groups, budgets descending."""
    lines = [
        "| Label strategy | Budget | Examples w/ labels | mAP | d' |",
        "|---|---:|---:|---:|---:|",
    ]
    for strategy in ("all", "random-scratch", "random-pretrained", "cluster"):
        group = rows[rows["strategy"] == strategy].sort_values("budget", ascending=False)
        title = STRATEGY_TITLES[strategy] + (f": {clustering}" if strategy == "cluster" else "")
        for row in group.itertuples():
            lines.append(
                f"| {title} | {row.budget:,} | {row.examples:,} | {_cell(row.mAP)} | "
                f"{_cell(row.d_prime, 2)} |"
            )
    return "\n".join(lines) + "\n"


def _ratio(value: float) -> str:
    """A ratio as "2.38x", or "n/a" (no random row at that budget)."""
    return "n/a" if math.isnan(value) else f"{value:.2f}x"


def efficiency_markdown(rows: pd.DataFrame) -> str:
    """The label-efficiency figures of cluster labeling against both random strategies."""
    parts = []
    for reference in ("random-scratch", "random-pretrained"):
        if not (rows["strategy"] == reference).any() or not (rows["strategy"] == "cluster").any():
            continue
        table = label_efficiency(rows.dropna(subset=["mAP"]), reference)
        parts.append(
            f"Cluster labeling against {STRATEGY_TITLES[reference].lower()}:\n\n"
            "| Budget | Cluster mAP | Random mAP | mAP ratio | Random budget for the same mAP |\n"
            "|---:|---:|---:|---:|---:|"
        )
        for row in table.itertuples():
            shown = {"=": "", "<=": "<= ", ">": "> "}[row.bound]
            parts[-1] += (
                f"\n| {row.budget:,} | {_cell(row.mAP)} | {_cell(row.reference_mAP)} | "
                f"{_ratio(row.map_ratio)} | {shown}{row.budget_ratio:.2f}x |"
            )
        parts[-1] += "\n"
    return "\n".join(parts)


def plot_table3(rows: pd.DataFrame, path: Path) -> None:
    """mAP against label budget (log x) for the three strategies, the topline dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for strategy, marker in (("random-scratch", "o"), ("random-pretrained", "s"), ("cluster", "^")):
        group = rows[rows["strategy"] == strategy].sort_values("budget")
        if len(group):
            ax.plot(group["budget"], group["mAP"], marker=marker, label=STRATEGY_TITLES[strategy])
    topline = rows[rows["strategy"] == "all"]
    if len(topline):
        ax.axhline(float(topline["mAP"].iloc[0]), color="gray", linestyle="--", label="all labels")
    ax.set_xscale("log")
    # The measured budgets as plain numbers, not powers of ten.
    # A budget within 15 % of the previous tick (a cluster budget capped at the active clusters,
    # 19 next to 20) gets no label of its own: the two would print over each other.
    ticks: list[float] = []
    for budget in sorted(set(rows.loc[rows["strategy"] != "all", "budget"].tolist())):
        if not ticks or budget > 1.15 * ticks[-1]:
            ticks.append(budget)
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("label budget")
    ax.set_ylabel("clip-level mAP")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_table3(
    run_dir: Path,
    train_store_path: Path,
    test_store_path: Path,
    budgets: Sequence[int],
    out: Path,
    oracle: str = "store",
    cfg: FinetuneConfig | None = None,
    method: Literal["head", "kmeans"] = "head",
    k: int | None = None,
    order: Order = "random",
    member: MemberChoice = "random",
    seed: int = 0,
    topline: bool = True,
) -> pd.DataFrame:
    """`coincide reproduce table3`: run the table, write DIR/table3.csv, table3.md and
    table3.png, and print the table with its label-efficiency figures."""
    if not Path(run_dir).is_dir():
        raise UserError(f"run folder {run_dir} does not exist; train it first.")
    cfg = cfg or FinetuneConfig()
    train_store = open_store(train_store_path)
    test_store = open_store(test_store_path)
    window_labels = oracle_window_labels(train_store, oracle)
    test_labels = oracle_window_labels(test_store, oracle)
    rows = table3(
        run_dir,
        train_store,
        test_store,
        budgets,
        out,
        window_labels,
        test_labels,
        cfg,
        method,
        k,
        order,
        member,
        seed,
        topline,
    )
    clustering = "head" if method == "head" else f"kmeans-{k}"
    rows.to_csv(out / "table3.csv", index=False)
    plot_table3(rows, out / "table3.png")
    table = table3_markdown(rows, clustering)
    efficiency = efficiency_markdown(rows)
    (out / "table3.md").write_text(
        "# Table 3: classifiers from random and cluster labeling\n\n"
        f"Run `{run_dir}` ({clustering} clustering), train store `{train_store.root}`, test store "
        f"`{test_store.root}`; oracle `{oracle}`; {cfg.steps} fine-tuning steps of "
        f"{cfg.batch_size} windows; seed {seed}.\n\n"
        + table
        + "\n## Label efficiency\n\n"
        + efficiency
        + "\n![mAP against budget](table3.png)\n",
        encoding="utf-8",
    )
    print(table)
    print(efficiency)
    print(f"wrote {out / 'table3.md'}, {out / 'table3.csv'} and {out / 'table3.png'}")
    return rows
