"""Table 3's outputs: the mean and spread over seeds, the label-efficiency figures, the plot.

`summarize` reduces the per-seed rows of `coincide.experiments.table3` to one row per
(strategy, budget):
the mean and the standard deviation (over seeds, ddof 1) of mAP and d'. The label-efficiency
figures of SPEC section 3 are computed on the means:
- the mAP ratio at each budget, cluster over random, with its spread by the delta method,
  ratio x sqrt((sd_c / mean_c)^2 + (sd_r / mean_r)^2);
- the random budget needed for the cluster mean's mAP, over the cluster budget (interpolated
  linearly in mAP against log budget on the random means), with the range it spans when the
  cluster mAP is one standard deviation lower or higher.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from coincide.store.features import FeatureStore

if TYPE_CHECKING:
    from coincide.experiments.table3 import Table3Settings

STRATEGY_TITLES = {
    "all": "Complete (topline)",
    "random-scratch": "Random (from scratch)",
    "random-pretrained": "Random (pretrained f)",
    "cluster": "Cluster",
}
REFERENCES = ("random-scratch", "random-pretrained")
SEEDS_FILE = "table3_seeds.csv"
OPTIONAL_MEANS = ("label_precision", "label_recall", "coverage", "precision_estimate", "steps")


def strategy_title(strategy: str, clustering: str = "") -> str:
    """`Cluster: head`, `Cluster (member=medoid): head`, `Random (from scratch)`, ..."""
    if strategy.startswith("cluster"):
        query = strategy.removeprefix("cluster").strip("[]")
        return (
            "Cluster" + (f" ({query})" if query else "") + (f": {clustering}" if clustering else "")
        )
    return STRATEGY_TITLES[strategy]


def cell(value: Any, digits: int = 3) -> str:
    """A table cell: the number, `n/a` for NaN or None, `inf` as such."""
    # NaN is undefined (n/a); d' of a perfectly separated class is +inf, shown as such.
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if np.isfinite(value) else str(value)


def _spread(mean: float, sd: float, digits: int = 3) -> str:
    """`0.312 ± 0.021`, or the mean alone when there is one seed."""
    if sd is None or np.isnan(sd):
        return cell(mean, digits)
    return f"{cell(mean, digits)} ± {sd:.{digits}f}"


# ---------------------------------------------------------------------------------------------
# Mean and spread


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (strategy, query, budget): examples, mAP, mAP_sd, d_prime, d_prime_sd,
    seeds, and the means of the label-quality columns present."""
    if rows.empty:
        return pd.DataFrame(columns=["strategy", "query", "budget", "examples", "mAP", "seeds"])
    present = [c for c in OPTIONAL_MEANS if c in rows]
    grouped = rows.groupby(["strategy", "query", "budget"], sort=False, dropna=False)
    summary = grouped.agg(
        examples=("examples", "mean"),
        mAP=("mAP", "mean"),
        mAP_sd=("mAP", "std"),
        d_prime=("d_prime", "mean"),
        d_prime_sd=("d_prime", "std"),
        seeds=("seed", "nunique"),
        **{c: (c, "mean") for c in present},
    ).reset_index()
    summary["examples"] = summary["examples"].round().astype(int)
    return summary


# ---------------------------------------------------------------------------------------------
# Label efficiency


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
    strategy), SPEC section 3, on the mean rows of `summarize` (or any rows with columns
    strategy, budget, mAP; `mAP_sd` when present gives the spread).

    Returns:
        One row per budget of `against`: budget, its mAP, the reference's mAP at that budget,
        `map_ratio` (against / reference) with `map_ratio_sd`, and `budget_ratio` with `bound`:
        the reference's budget to reach the same mAP divided by this budget ("=", or a bound
        "<=" / ">"), and `budget_ratio_low` / `budget_ratio_high` at the mAP -/+ one sd.
    """
    ours = rows[rows["strategy"] == against].sort_values("budget")
    theirs = rows[rows["strategy"] == reference].sort_values("budget")
    their_budgets, their_maps = list(theirs["budget"]), list(theirs["mAP"])
    their = {b: i for i, b in enumerate(their_budgets)}
    sds = theirs["mAP_sd"].tolist() if "mAP_sd" in theirs else [math.nan] * len(theirs)
    result = []
    for _, row in ours.iterrows():
        budget, value = int(row["budget"]), float(row["mAP"])
        sd = float(row.get("mAP_sd", math.nan))
        needed, bound = budget_to_reach(their_budgets, their_maps, value)
        at = their.get(budget)
        reference_map = their_maps[at] if at is not None else math.nan
        ratio = value / reference_map if reference_map else math.nan
        ratio_sd = ratio * math.hypot(
            sd / value if value else math.nan,
            sds[at] / reference_map if at is not None and reference_map else math.nan,
        )
        low = budget_to_reach(their_budgets, their_maps, value - sd)[0] if sd == sd else math.nan
        high = budget_to_reach(their_budgets, their_maps, value + sd)[0] if sd == sd else math.nan
        result.append(
            {
                "budget": budget,
                "mAP": value,
                "reference_mAP": reference_map,
                "map_ratio": ratio,
                "map_ratio_sd": ratio_sd,
                "budget_ratio": needed / budget,
                "bound": bound,
                "budget_ratio_low": low / budget,
                "budget_ratio_high": high / budget,
            }
        )
    return pd.DataFrame(result)


def _ratio(value: float, sd: float = math.nan) -> str:
    """A ratio as "2.38x", "2.38x ± 0.40", or "n/a" (no random row at that budget)."""
    if math.isnan(value):
        return "n/a"
    return f"{value:.2f}x" + ("" if math.isnan(sd) else f" ± {sd:.2f}")


def efficiency_markdown(summary: pd.DataFrame) -> str:
    """The label-efficiency figures of the paper's cluster labeling against both random
    strategies, then each other query against random labels on the pretrained f."""
    parts = []
    rows = summary.dropna(subset=["mAP"])
    for reference in REFERENCES:
        if not (rows["strategy"] == reference).any() or not (rows["strategy"] == "cluster").any():
            continue
        table = label_efficiency(rows, reference)
        lines = [
            f"Cluster labeling against {STRATEGY_TITLES[reference].lower()} (means over seeds, "
            "± one standard deviation):",
            "",
            "| Budget | Cluster mAP | Random mAP | mAP ratio | Random budget for the same mAP |",
            "|---:|---:|---:|---:|---:|",
        ]
        for row in table.itertuples():
            shown = {"=": "", "<=": "<= ", ">": "> "}[row.bound]
            spread = ""
            if not math.isnan(row.budget_ratio_low) and row.bound == "=":
                spread = f" ({row.budget_ratio_low:.2f}-{row.budget_ratio_high:.2f}x)"
            lines.append(
                f"| {row.budget:,} | {cell(row.mAP)} | {cell(row.reference_mAP)} | "
                f"{_ratio(row.map_ratio, row.map_ratio_sd)} | "
                f"{shown}{row.budget_ratio:.2f}x{spread} |"
            )
        parts.append("\n".join(lines) + "\n")
    others = sorted(s for s in rows["strategy"].unique() if s.startswith("cluster["))
    if others and (rows["strategy"] == "random-pretrained").any():
        lines = [
            "Other queries (mAP ratio against random labels on the pretrained f, and against "
            "the paper's query):",
            "",
            "| Query | Budget | mAP | vs random (pretrained f) | vs paper query |",
            "|---|---:|---:|---:|---:|",
        ]
        for strategy in others:
            versus_random = label_efficiency(rows, "random-pretrained", strategy)
            versus_paper = label_efficiency(rows, "cluster", strategy)
            for a, b in zip(versus_random.itertuples(), versus_paper.itertuples(), strict=True):
                lines.append(
                    f"| {strategy.removeprefix('cluster')} | {a.budget:,} | {cell(a.mAP)} | "
                    f"{_ratio(a.map_ratio, a.map_ratio_sd)} | "
                    f"{_ratio(b.map_ratio, b.map_ratio_sd)} |"
                )
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def signal_markdown(summary: pd.DataFrame) -> str:
    """The stopping signal's precision estimate (from checks) against the true precision of
    the propagated labels, for the rows with checks; empty when there are none."""
    if "precision_estimate" not in summary:
        return ""
    rows = summary.dropna(subset=["precision_estimate"])
    if rows.empty:
        return ""
    lines = [
        "Stopping signal: label precision estimated from the checks against the true precision "
        "(oracle), and coverage (share of windows labeled); means over seeds:",
        "",
        "| Query | Budget | Estimated precision | True precision | Coverage |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows.itertuples():
        lines.append(
            f"| {row.strategy.removeprefix('cluster')} | {row.budget:,} | "
            f"{cell(row.precision_estimate)} | {cell(row.label_precision)} | "
            f"{cell(row.coverage)} |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The table and the plot


def _order(strategy: str) -> tuple[int, str]:
    known = ("all", "random-scratch", "random-pretrained", "cluster")
    return (known.index(strategy), "") if strategy in known else (len(known), strategy)


def table3_markdown(summary: pd.DataFrame, clustering: str) -> str:
    """Table 3 in the paper's layout (strategy groups, budgets descending), mAP and d' as mean
    ± standard deviation over the seeds, and the true precision of the labels of cluster
    rows."""
    lines = [
        "| Label strategy | Budget | Examples w/ labels | mAP | d' | Seeds | Label precision |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for strategy in sorted(summary["strategy"].unique(), key=_order):
        group = summary[summary["strategy"] == strategy].sort_values("budget", ascending=False)
        title = strategy_title(strategy, clustering)
        for row in group.itertuples():
            precision = getattr(row, "label_precision", math.nan)
            lines.append(
                f"| {title} | {row.budget:,} | {row.examples:,} | {_spread(row.mAP, row.mAP_sd)} "
                f"| {_spread(row.d_prime, row.d_prime_sd, 2)} | {row.seeds} | "
                f"{cell(precision) if strategy.startswith('cluster') else ''} |"
            )
    return "\n".join(lines) + "\n"


def plot_table3(summary: pd.DataFrame, path: Path) -> None:
    """mAP (mean, with a bar of one standard deviation) against label budget (log x) for each
    strategy; the topline dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, ax = plt.subplots(figsize=(6, 4.2))
    strategies = [s for s in sorted(summary["strategy"].unique(), key=_order) if s != "all"]
    markers = "osv^Dpx*h"
    for i, strategy in enumerate(strategies):
        group = summary[summary["strategy"] == strategy].sort_values("budget")
        # A small shift on the log axis keeps the bars of equal budgets apart.
        shift = 1.0 + 0.025 * (i - (len(strategies) - 1) / 2)
        ax.errorbar(
            group["budget"] * shift,
            group["mAP"],
            yerr=group["mAP_sd"].fillna(0.0),
            marker=markers[i % len(markers)],
            capsize=3,
            linestyle="-" if i < 3 or strategy == "cluster" else ":",
            label=strategy_title(strategy),
        )
    topline = summary[summary["strategy"] == "all"]
    if len(topline):
        ax.axhline(float(topline["mAP"].iloc[0]), color="gray", linestyle="--", label="all labels")
    ax.set_xscale("log")
    # The measured budgets as plain numbers; one within 15 % of the previous tick (a cluster
    # budget capped at the active clusters, 19 next to 20) gets no label of its own.
    ticks: list[float] = []
    for budget in sorted(set(summary.loc[summary["strategy"] != "all", "budget"].tolist())):
        if not ticks or budget > 1.15 * ticks[-1]:
            ticks.append(budget)
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("label budget")
    ax.set_ylabel("clip-level mAP (mean ± sd over seeds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_table3(
    rows: pd.DataFrame,
    settings: Table3Settings,
    train_store: FeatureStore,
    test_store: FeatureStore,
    timing: dict[str, float],
) -> pd.DataFrame:
    """Write table3_seeds.csv (every row), table3.csv (means), table3.md, table3.png and
    timing.json into the output folder, print the table, and return the means."""
    out, cfg = settings.out, settings.cfg
    settings.write(out)
    rows.to_csv(out / SEEDS_FILE, index=False)
    summary = summarize(rows)
    summary.to_csv(out / "table3.csv", index=False)
    plot_table3(summary, out / "table3.png")
    clustering = "head" if settings.method == "head" else f"kmeans-{settings.k}"
    if settings.head_steps:
        clustering = f"head-steps-{settings.head_steps}"
    table = table3_markdown(summary, clustering)
    efficiency = efficiency_markdown(summary)
    signal = signal_markdown(summary)
    stopping = (
        f"at most {cfg.steps} steps of {cfg.batch_size} windows, the count chosen on "
        f"{cfg.val_fraction:.0%} of the labeled media and trained again on all"
        if cfg.early_stop
        else f"{cfg.steps} steps of {cfg.batch_size} windows"
    )
    took = (
        f"Made in {timing['wall_s'] / 60:.1f} min ({timing['cpu_s'] / 60:.1f} CPU-minutes, "
        "this invocation: rows read back from an earlier one take no time)."
    )
    (out / "timing.json").write_text(json.dumps(timing) + "\n", encoding="utf-8")
    (out / "table3.md").write_text(
        "# Table 3: classifiers from random and cluster labeling\n\n"
        f"Run `{settings.run}` ({clustering} clustering), train store `{train_store.root}`, "
        f"test store `{test_store.root}`; oracle `{settings.oracle}`; fine-tuning {stopping}; "
        f"label draws of seeds {', '.join(map(str, settings.seeds))}. {took}\n\n"
        + table
        + "\n## Label efficiency\n\n"
        + efficiency
        + (f"\n## Stopping signal\n\n{signal}" if signal else "")
        + "\n![mAP against budget](table3.png)\n",
        encoding="utf-8",
    )
    print(table)
    print(efficiency)
    if signal:
        print(signal)
    print(
        f"table3: {len(rows)} classifiers in {timing['wall_s'] / 60:.1f} min "
        f"({timing['cpu_s'] / 60:.1f} CPU-minutes); wrote {out / 'table3.md'}, table3.csv, "
        f"{SEEDS_FILE} and table3.png"
    )
    return summary
