"""`coincide finetune`: read the labels of a strategy, train p_class on f, score, write.

The training itself is `coincide.classifier.train.finetune_strategy`; this module only finds the
labels:
a labeling session's propagated labels (`coincide label`), or every label of the store for the
topline, plus, with `--add-session`, the answers of search sessions (`coincide search
--label-as`), which add positive and negative labels of single windows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from coincide.classifier.train import (
    FinetuneConfig,
    FinetuneStrategy,
    TrainingSet,
    finetune_strategy,
)
from coincide.config.stage import StageSettings
from coincide.errors import UserError
from coincide.labeling.sessions import SUMMARY_FILE, labels_dir
from coincide.run_folder import RunFolder
from coincide.store.labels import label_store_path


def default_session(strategy: FinetuneStrategy) -> str | None:
    """The labeling session a strategy reads by default (`coincide label`'s default names)."""
    if strategy == "cluster":
        return "cluster"
    if strategy.startswith("random"):
        return "random"
    return None


@dataclass(frozen=True)
class FinetuneSettings(StageSettings):
    """`coincide finetune`: which run, store and labels, and how p_class is trained (`cfg`).

    `session` None is the strategy's default session; `out` None names the folder
    RUN/finetune/<strategy>[-<session>][-search]; `test_store` is a labeled store to score clips
    on; `oracle` gives the labels of the `all` strategy; `checkpoint` None is the run's best;
    `with_search` adds the answers of every search session on the store (in `db`, default
    RUN/labels.sqlite).
    """

    command: ClassVar[str] = "finetune"
    run: Path
    store: Path
    strategy: FinetuneStrategy = "cluster"
    session: str | None = None
    out: str | None = None
    test_store: Path | None = None
    oracle: str = "store"
    checkpoint: Path | None = None
    cfg: FinetuneConfig = field(default_factory=FinetuneConfig)
    with_search: bool = False
    db: Path | None = None


def run(settings: FinetuneSettings) -> dict[str, Any]:
    """The `coincide finetune` command: read the labels, train, evaluate, write (the settings
    too, as settings.json in the output folder)."""
    from coincide.labeling.oracle import oracle_window_labels
    from coincide.labeling.sessions import check_propagated_current, read_propagated
    from coincide.stages.cluster import check_run, default_checkpoint
    from coincide.store.features import open_store

    run_dir = settings.run
    store_path = settings.store
    strategy = settings.strategy
    session = settings.session
    check_run(run_dir)
    checkpoint = Path(settings.checkpoint or default_checkpoint(run_dir))
    store = open_store(store_path)
    test_store = open_store(settings.test_store) if settings.test_store else None

    # The labels of this strategy.
    extra: dict[str, Any] = {}
    if strategy == "all":
        labeled = TrainingSet.from_window_labels(oracle_window_labels(store, settings.oracle))
    else:
        session = session or default_session(strategy)
        assert session is not None
        summary_path = labels_dir(run_dir, session) / SUMMARY_FILE
        propagated = read_propagated(run_dir, session)
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        wanted = "cluster" if strategy == "cluster" else "random"
        if summary.get("strategy") != wanted:
            raise UserError(
                f"session {session!r} holds {summary.get('strategy')} labels but --strategy "
                f"{strategy} trains on {wanted} labels; pass --session with a {wanted} session."
            )
        check_propagated_current(run_dir, session, summary)
        labeled = TrainingSet.from_frame(propagated, by_cluster=strategy == "cluster")
        extra = {"session": session, "budget": summary.get("requests")}
        if int(labeled.windows.max(initial=-1)) >= len(store):
            raise UserError(
                f"session {session!r} labels windows beyond the {len(store)} of {store_path}; "
                "fine-tune on the store the session labeled."
            )

    if settings.with_search:
        labeled, extra["search_sessions"] = _add_search_labels(run_dir, store, labeled, settings.db)

    default_out = strategy if strategy == "all" else f"{strategy}-{session}"
    default_out += "-search" if settings.with_search else ""
    out_dir = RunFolder(run_dir).finetune(settings.out or default_out)
    metrics = finetune_strategy(
        strategy, checkpoint, store, labeled, out_dir, settings.cfg, test_store, extra=extra
    )
    settings.write(out_dir)
    line = (
        f"{strategy}: trained on {metrics['labeled_windows']} labeled windows, "
        f"{len(metrics['classes'])} classes"
    )
    if "mAP" in metrics:
        line += f"; clip-level mAP {metrics['mAP']:.3f}, d' {metrics['d_prime']:.2f}"
    print(f"{line}; wrote {out_dir}")
    return metrics


def _add_search_labels(
    run_dir: Path, store: Any, labeled: TrainingSet, db: Path | None
) -> tuple[TrainingSet, list[str]]:
    """The labels with every search session's answers on top, and those sessions' names."""
    from coincide.labeling.search_label import merge_search_labels, search_answers, search_sessions
    from coincide.store.labels_sqlite import SQLiteLabelStore

    db_path = label_store_path(run_dir, db or None)
    if not db_path.is_file():
        raise UserError(
            f"--with-search: no label store at {db_path}; label search hits first with "
            "`coincide search RUN --store STORE --query ... --label-as CLASS`."
        )
    with SQLiteLabelStore(db_path) as label_store:
        sessions = search_sessions(label_store, store.root)
        if not sessions:
            raise UserError(
                f"--with-search: {db_path} has no search session on {store.root}; label search "
                "hits first with `coincide search ... --label-as CLASS`."
            )
        answers = search_answers(label_store, sessions)
    merged = merge_search_labels(labeled, answers)
    print(
        f"search labels: {len(answers)} windows answered in {len(sessions)} search sessions; "
        f"{len(merged.windows)} windows to train on"
    )
    return merged, [s.name for s in sessions]
