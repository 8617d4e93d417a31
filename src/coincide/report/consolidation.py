"""`coincide report`'s consolidation sections: the labeling sessions and the fine-tunings.

Labels (RUN/labels/<session>/summary.json and propagated.parquet, from `coincide label`): the
answers (clusters asked, answered, waiting, by kind), the propagation (windows and clusters per
class), and the precision of the propagated labels against the labeled store's own clip labels:
the summary's figure when the oracle answered from them, else measured here when that store
holds clip labels (a person's answers checked against them); without reference labels the
section says precision cannot be estimated.

Fine-tuning (RUN/finetune/<name>/, from `coincide finetune`): a table of every fine-tuning
(strategy, labels, steps, clip-level mAP, d'), then per fine-tuning its loss curve (the
picture it wrote, or plotted from its train_log.csv) and each test class's AP.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from coincide.console import printable
from coincide.report.html import Pictures, key_table, missing, table, text
from coincide.run_folder import FINETUNE_DIR, FINETUNE_SETTINGS, LABELS_DIR, METRICS_FILE, PLOTS_DIR
from coincide.store.labels import label_store_path
from coincide.store.layout import read_json_or_none
from coincide.train.report import plot_stage

RERUN = "delete it and run its command again"  # what to do about a file that does not parse
FINETUNE_PLOT = "stage1_finetune.png"  # what finetune's plot_stage(out, 1, "finetune") writes


# ---------------------------------------------------------------------------------------------
# Labels


def _reference_labels(run: Path, name: str, summary: dict[str, Any]) -> tuple[list, Path] | None:
    """The clip labels of every window of the store a session labeled, and that store; None
    when the label store, the session's store or its labels are not there."""
    from coincide.store.features import open_store
    from coincide.store.labels_sqlite import SQLiteLabelStore

    db = label_store_path(run, summary.get("label_store"))
    if not db.is_file():
        return None
    with SQLiteLabelStore(db) as label_store:
        session = label_store.get_session(name)
    if session is None or not Path(session.store).is_dir():
        return None
    labels = [list(names) for names in open_store(session.store).index["labels"]]
    return (labels, Path(session.store)) if any(labels) else None


def _precision(
    run: Path, name: str, summary: dict[str, Any], propagated: pd.DataFrame
) -> tuple[str, dict[str, tuple[int, int]]]:
    """A paragraph on the propagated labels' precision, and per class (given, correct) window
    counts against the reference labels (empty without them)."""
    from coincide.labeling.sessions import label_quality

    if not len(propagated):
        return "<p>No label was propagated yet, so there is no precision to estimate.</p>", {}
    reference = _reference_labels(run, name, summary)
    if reference is None or int(propagated["window_index"].max()) >= len(reference[0]):
        if summary.get("label_precision") is not None:  # the oracle's store is gone since
            return (
                f"<p>Label precision {summary['label_precision']:.3f}, recall "
                f"{summary['label_recall']:.3f} (measured when the labels were propagated).</p>",
                {},
            )
        return (
            "<p>Precision cannot be estimated: the labeled store has no clip labels to check "
            "the answers against (attach some with <code>coincide add-labels</code>).</p>",
            {},
        )
    truth, store = reference
    precision, recall = label_quality(propagated, truth)
    counts: dict[str, tuple[int, int]] = {}
    for window, names in zip(propagated["window_index"], propagated["labels"], strict=True):
        for label in names:
            given, correct = counts.get(label, (0, 0))
            counts[label] = (given + 1, correct + int(label in truth[window]))
    return (
        f"<p>Label precision <b>{precision:.3f}</b>, recall {recall:.3f}: the labels of "
        f"{len(propagated)} windows checked against the clip labels of "
        f"<code>{text(store)}</code>, over (window, class) pairs.</p>",
        counts,
    )


def _session(run: Path, folder: Path) -> str:
    from coincide.labeling.sessions import PROPAGATED_FILE, SUMMARY_FILE

    summary = read_json_or_none(folder / SUMMARY_FILE, RERUN)
    propagated = pd.read_parquet(folder / PROPAGATED_FILE)
    name = str(summary.get("session", folder.name))
    kinds = ", ".join(
        f"{kind} {count}" for kind, count in sorted(summary["answers_by_kind"].items())
    )
    random = summary.get("strategy") == "random"
    answers = [
        ["Label budget", summary.get("budget")],
        ["Windows asked" if random else "Clusters asked", summary["requests"]],
        ["Answered", summary["answered"]],
        ["Waiting for an annotator", summary["requests"] - summary["answered"]],
        ["Answers by kind", kinds or "none"],
    ]
    paragraph, counts = _precision(run, name, summary, propagated)
    windows = Counter(label for names in propagated["labels"] for label in names)
    answered = propagated.groupby("cluster_id")["labels"].first()
    clusters = Counter(label for names in answered for label in set(names))
    rows = []
    for label in sorted(windows):
        given, correct = counts.get(label, (0, 0))
        rows.append([label, clusters[label], windows[label], correct / given if given else None])
    header = ["class", "windows asked" if random else "clusters", "windows labeled", "precision"]
    how = "labeled alone" if random else "propagated to its cluster"
    origin = "random windows" if random else f"the {summary.get('clustering')} clustering"
    return "\n".join(
        [
            f"<h3>Session {text(name)}: labels of {text(origin)}</h3>",
            table(["answers", "count"], answers, {1}),
            f"<p>{summary['labeled_windows']} windows labeled, {len(windows)} "
            f"class{'' if len(windows) == 1 else 'es'}; each answered window's labels {how}.</p>",
            paragraph,
            table(header, rows, {1, 2, 3}) if rows else "",
        ]
    )


def labels_section(run: Path) -> str:
    """Section 3 (HTML): every labeling session's answers, propagation and precision."""
    folders = sorted(p.parent for p in (run / LABELS_DIR).glob("*/summary.json"))
    if not folders:
        return missing(
            f"a labeling session ({run / LABELS_DIR}/SESSION/summary.json)",
            f"coincide label {printable(run)} --store STORE --budget N",
        )
    return "\n".join(_session(run, folder) for folder in folders)


# ---------------------------------------------------------------------------------------------
# Fine-tuning


def _curve(folder: Path, pictures: Pictures, finished: bool) -> str:
    """The fine-tuning's loss curve: its own picture once finished, else plotted from its log."""
    written = folder / PLOTS_DIR / FINETUNE_PLOT
    if not (finished and written.is_file()):
        plotted = (
            plot_stage(folder, 1, "finetune") if (folder / "train_log.csv").is_file() else None
        )
        if plotted is None:
            return "<p>No loss curve (fine-tuned before coincide recorded one).</p>"
        written = plotted
    copy = pictures.copy(written, f"finetune_{folder.name}.png")
    return pictures.image(copy, f"loss curve of fine-tuning {folder.name}")


def _per_class(metrics: dict[str, Any]) -> str:
    per_class = metrics.get("per_class_ap")
    if per_class is None:
        return "<p>No per-class AP recorded (fine-tuned before coincide kept it).</p>"
    untrained = set(metrics.get("untrained_classes", []))
    rows = [
        [name, ap, "never labeled: constant score" if name in untrained else ""]
        for name, ap in sorted(per_class.items())
    ]
    return table(["test class", "clip-level AP", ""], rows, {1})


def finetune_section(run: Path, pictures: Pictures) -> str:
    """Section 4 (HTML): a table of the run's fine-tunings, then each one's curve and APs."""

    base = run / FINETUNE_DIR
    folders = sorted(p for p in base.glob("*") if p.is_dir()) if base.is_dir() else []
    if not folders:
        return missing(
            f"a fine-tuning ({base}/NAME/)",
            f"coincide finetune {printable(run)} --store STORE --test-store TEST_STORE",
        )
    summary_rows, parts = [], []
    for folder in folders:
        metrics = read_json_or_none(folder / METRICS_FILE, RERUN) or {}
        finished = (folder / FINETUNE_SETTINGS).is_file()
        summary_rows.append(
            [
                folder.name,
                metrics.get("strategy"),
                metrics.get("session"),
                metrics.get("labeled_windows"),
                len(metrics.get("classes", [])) or None,
                metrics.get("steps"),
                metrics.get("mAP"),
                metrics.get("d_prime"),
            ]
        )
        parts.append(f"<h3>{text(folder.name)}</h3>")
        if not finished:
            parts.append("<p>In progress (or stopped): no finetune.json yet.</p>")
        parts.append(_curve(folder, pictures, finished))
        if "mAP" in metrics:
            single = {k: metrics[k] for k in ("mAP", "d_prime", "test_clips", "test_classes")}
            parts += [key_table(single), _per_class(metrics)]
        elif finished:
            parts.append(
                "<p>Not scored: fine-tuned without <code>--test-store</code>, so there is no "
                "mAP or per-class AP.</p>"
            )
    header = ["name", "strategy", "session", "labeled windows", "classes", "steps", "mAP", "d′"]
    return "\n".join([table(header, summary_rows, {3, 4, 5, 6, 7}), *parts])
