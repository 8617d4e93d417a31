"""`coincide reproduce table3`: classifiers from random and cluster labeling (paper Table 3).

For each budget N, each seed of the label draw and each strategy, one classifier is fine-tuned
and scored on a test store:
    random-scratch     N random windows, f from fresh weights (the paper's baseline)
    random-pretrained  the same N windows, f from the curriculum (not in the paper)
    cluster            N clusters asked through one member each, labels propagated (the paper)
    cluster[...]       cluster labeling with another query (`--queries`): member medoid or
                       typical, order size or size-uncertainty, checks every C clusters
plus the topline (every label, one seed). A seed s draws the labels (the random windows, the
cluster order and members) and seeds the row's fine-tuning (batches, fresh weights, the
validation split), so the spread over seeds is the spread a user would see.

Made to take minutes, not hours:
- f(x) of the training and test stores is computed once (`coincide.stages.cluster.store_embeddings`,
  kept in the run folder): rows that start from the curriculum fit p_class on it first (warm
  start), and a row whose f was not trained is scored from it without running f again.
- each row picks its number of steps on held-out labeled media and stops early
  (`coincide.classifier.fit`);
- the labeling sessions are answered by the oracle once, up to the largest budget; a smaller
  budget is a prefix of the same requests;
- rows run in parallel processes with one thread each (`--workers`): the small networks use
  two cores better as two rows than as two threads of one.

Resumable: sessions live in DIR/labels.sqlite and each row's classifier in DIR/runs/<row>/; a
row already made with the same settings is read back. The tables, ratios and plot are made by
`coincide.experiments.table3_report`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import resource
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from coincide.classifier.train import FinetuneConfig, TrainingSet, finetune_strategy
from coincide.config.choices import ClusterMethod, ClusterOrder
from coincide.config.stage import StageSettings
from coincide.errors import UserError
from coincide.labeling.clusters import EMBEDDINGS_FILE, ClusterMembers, store_clusters_dir
from coincide.labeling.oracle import WindowLabelOracle, answer_with_oracle, oracle_window_labels
from coincide.labeling.select import MEMBERS, ORDERS, MemberChoice
from coincide.labeling.sessions import (
    SessionPlan,
    cluster_plan,
    extend_session,
    label_quality,
    open_session,
    session_labels,
)
from coincide.labeling.signal import estimate as estimate_signal
from coincide.stages.cluster import (
    ClusterSettings,
    default_checkpoint,
    ensure_clustering,
    resolve_method,
    store_embeddings,
)
from coincide.store.features import FeatureStore, open_store
from coincide.store.labels import label_store_path
from coincide.store.labels_sqlite import SQLiteLabelStore

DEFAULT_SEEDS = (0, 1, 2)
# Checks every this many clusters in the `checks` query of `--queries all`.
DEFAULT_CHECK_EVERY = 4


# ---------------------------------------------------------------------------------------------
# Queries: how cluster labeling picks its requests


@dataclass(frozen=True)
class Query:
    """One way of asking clusters; the default is the paper's (random order, random member)."""

    order: ClusterOrder = "random"
    member: MemberChoice = "random"
    check_every: int = 0

    @property
    def name(self) -> str:
        """`paper`, or what differs from it, e.g. `member=medoid` or `checks=4`."""
        parts = []
        if self.order != "random":
            parts.append(f"order={self.order}")
        if self.member != "random":
            parts.append(f"member={self.member}")
        if self.check_every:
            parts.append(f"checks={self.check_every}")
        return ",".join(parts) or "paper"

    @property
    def strategy(self) -> str:
        """The strategy column of a row: `cluster` for the paper, `cluster[NAME]` otherwise."""
        return "cluster" if self.name == "paper" else f"cluster[{self.name}]"


PAPER_QUERY = Query()
ALL_QUERIES = (
    Query(member="medoid"),
    Query(member="typical"),
    Query(order="size"),
    Query(order="size-uncertainty"),
    Query(check_every=DEFAULT_CHECK_EVERY),
)


def parse_queries(text: str) -> list[Query]:
    """`--queries`: comma-separated `member=medoid|typical`, `order=size|size-uncertainty`,
    `checks=N`, or `all` (the five of `ALL_QUERIES`); each is one extra row per budget."""
    queries: list[Query] = []
    for token in (t.strip() for t in text.split(",") if t.strip()):
        key, _, value = token.partition("=")
        if token == "all":
            queries.extend(ALL_QUERIES)
        elif key == "member" and value in MEMBERS and value != "random":
            queries.append(Query(member=value))  # type: ignore[arg-type]  # checked
        elif key == "order" and value in ORDERS and value != "random":
            queries.append(Query(order=value))  # type: ignore[arg-type]  # checked
        elif key == "checks" and value.isdigit() and int(value) > 0:
            queries.append(Query(check_every=int(value)))
        else:
            raise UserError(
                f"--queries {token!r} is not a query; use member=medoid, member=typical, "
                "order=size, order=size-uncertainty, checks=N or all."
            )
    return list(dict.fromkeys(queries))


# ---------------------------------------------------------------------------------------------
# Labels: one random session and one session per query, per seed


@dataclass(frozen=True)
class Labels:
    """The labels one row trains on, with what the oracle can say about them."""

    strategy: str
    query: str
    seed: int
    budget: int  # requests asked (the budget, or fewer when every cluster was asked)
    labeled: TrainingSet
    quality: dict[str, float | None]


def _session_name(query: Query, clustering: str, seed: int) -> str:
    # The paper's query keeps the name earlier versions gave its sessions (they are reused).
    if query == PAPER_QUERY:
        return f"cluster-{clustering}-seed{seed}"
    return f"cluster-{clustering}-{query.name.replace('=', '-').replace(',', '-')}-seed{seed}"


def draw_labels(
    label_store: SQLiteLabelStore,
    run_dir: Path,
    store: FeatureStore,
    clustering: Any,
    queries: Sequence[Query],
    seeds: Sequence[int],
    budgets: Sequence[int],
    window_labels: Sequence[Sequence[str]],
    embeddings: np.ndarray | None = None,
) -> list[Labels]:
    """Answer every session with the oracle up to the largest budget (answers committed as
    given), and cut the labels of each budget. Random sessions give the labels of both random
    strategies. `embeddings` `(n, d)` of the store serve the medoid member."""
    members = ClusterMembers(clustering.assignment)
    oracle = WindowLabelOracle(window_labels)
    found: list[Labels] = []
    for seed in seeds:
        sessions: list[tuple[Query | None, Any]] = []
        random_plan = SessionPlan(strategy="random", seed=seed, windows=len(store))
        session = open_session(label_store, f"random-seed{seed}", run_dir, store, random_plan)
        sessions.append((None, session))
        for query in queries:
            plan = cluster_plan(clustering, query.order, query.member, seed, query.check_every)
            name = _session_name(query, clustering.name, seed)
            sessions.append((query, open_session(label_store, name, run_dir, store, plan)))
        for query, session in sessions:
            grouping = None if query is None else members
            requests = extend_session(
                label_store,
                session,
                budgets[-1],
                clustering if grouping else None,
                embeddings,
                grouping,
            )
            answer_with_oracle(label_store, session, requests, oracle)
            every = label_store.requests(session.id)
            for budget in budgets:
                asked = min(budget, len(every))
                propagated = session_labels(label_store, session, asked, grouping)
                quality: dict[str, float | None] = {}
                if grouping is not None:
                    precision, recall = label_quality(propagated, window_labels)
                    signal = estimate_signal(
                        every[:asked], label_store.answers(session.id), grouping, len(store), 0
                    )
                    quality = {
                        "label_precision": precision,
                        "label_recall": recall,
                        "coverage": signal.coverage,
                        # The estimate needs checks; without them it is not made.
                        "precision_estimate": signal.precision if query.check_every else None,
                    }
                labeled = TrainingSet.from_frame(propagated, by_cluster=query is not None)
                strategy, name = ("random", "") if query is None else (query.strategy, query.name)
                found.append(Labels(strategy, name, seed, asked, labeled, quality))
    return found


# ---------------------------------------------------------------------------------------------
# Rows: one fine-tuned classifier each, run in worker processes


@dataclass(frozen=True)
class Context:
    """What every row shares (paths and small lists, so that it travels to a worker)."""

    checkpoint: Path
    train_store: Path
    test_store: Path
    test_labels: list[list[str]]
    train_embeddings: Path
    test_embeddings: Path


_WORKER: dict[str, Any] = {}


def _init_worker(context: Context, threads: int | None) -> None:
    """Open the stores and embeddings once per process; one thread each when asked."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    _WORKER["context"] = context
    _WORKER["train"] = open_store(context.train_store)
    _WORKER["test"] = open_store(context.test_store)
    _WORKER["embeddings"] = np.load(context.train_embeddings, mmap_mode="r")
    _WORKER["test_embeddings"] = np.load(context.test_embeddings, mmap_mode="r")


def _train_row(task: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune and score one row (in a worker, after `_init_worker`); returns its metrics and
    the seconds it took."""
    started = time.monotonic()
    context: Context = _WORKER["context"]
    metrics = finetune_strategy(
        task["finetune"],
        context.checkpoint,
        _WORKER["train"],
        task["labeled"],
        Path(task["out_dir"]),
        task["cfg"],
        _WORKER["test"],
        context.test_labels,
        extra=task["extra"],
        embeddings=_WORKER["embeddings"],
        test_embeddings=_WORKER["test_embeddings"],
    )
    return {**metrics, "seconds": time.monotonic() - started}


def default_workers() -> int:
    """Rows run at once: one per CPU core the process may use (at most 8), or 1 on a GPU."""
    import torch

    if torch.cuda.is_available():
        return 1
    return max(1, min(8, len(os.sched_getaffinity(0))))


def run_rows(tasks: list[dict[str, Any]], context: Context, workers: int) -> list[dict[str, Any]]:
    """Train every task, the largest labeled sets first; print a line as each finishes.
    With `workers` > 1, in that many processes of one thread each."""
    order = sorted(range(len(tasks)), key=lambda i: -len(tasks[i]["labeled"].windows))
    results: list[dict[str, Any] | None] = [None] * len(tasks)

    def report(i: int, done: int) -> None:
        task, result = tasks[i], results[i]
        assert result is not None
        print(
            f"table3 [{done}/{len(tasks)}] {task['row']}: {len(task['labeled'].windows):,} "
            f"labeled windows, {result['steps']} steps of f -> clip mAP {result['mAP']:.3f} "
            f"({result['seconds']:.0f} s)",
            flush=True,
        )

    if workers <= 1:
        _init_worker(context, None)
        for done, i in enumerate(order, 1):
            results[i] = _train_row(tasks[i])
            report(i, done)
    else:
        pool = ProcessPoolExecutor(
            workers,
            mp_context=get_context("spawn"),
            initializer=_init_worker,
            initargs=(context, 1),
        )
        with pool:
            futures = {pool.submit(_train_row, tasks[i]): i for i in order}
            for done, future in enumerate(as_completed(futures), 1):
                results[futures[future]] = future.result()
                report(futures[future], done)
    return [r for r in results if r is not None]


# ---------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class Table3Settings(StageSettings):
    """What `coincide reproduce table3` runs (see `run_table3`); kept in DIR/settings.json."""

    command: ClassVar[str] = "reproduce table3"

    run: Path
    budgets: tuple[int, ...]
    out: Path
    cfg: FinetuneConfig
    method: ClusterMethod = "head"
    k: int | None = None
    head_steps: int = 0
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    queries: tuple[Query, ...] = ()
    topline: bool = True
    workers: int | None = None
    store: Path | None = None  # the stores and the oracle: recorded, opened by `run_table3`
    test_store: Path | None = None
    oracle: str = "store"


def table3(
    settings: Table3Settings,
    train_store: FeatureStore,
    test_store: FeatureStore,
    window_labels: Sequence[Sequence[str]],
    test_labels: Sequence[Sequence[str]],
) -> pd.DataFrame:
    """Label, fine-tune and score every row; rows already made with the same settings are read
    back.

    Returns:
        One row per (strategy, budget, seed): strategy, query, budget (requests asked), seed,
        examples (labeled windows), mAP, d_prime, steps (of f), head_steps, and for cluster
        rows label_precision, label_recall, coverage, precision_estimate (checks only).
    """
    budgets = sorted(set(settings.budgets))
    if not budgets or budgets[0] < 1:
        raise UserError("--budget must list positive label budgets, e.g. 10,20,50,100.")
    if not settings.seeds:
        raise UserError("--seed is empty; give at least one seed, e.g. --seed 0,1,2.")
    run_dir = Path(settings.run)
    checkpoint = default_checkpoint(run_dir)
    clustering = ensure_clustering(
        ClusterSettings(
            run_dir,
            train_store.root,
            settings.method,
            settings.k,
            checkpoint,
            seed=settings.seeds[0],
            head_steps=settings.head_steps,
        ),
        train_store,
    )
    # f(x) of both stores, once: the warm start reads them, untrained f is scored from them.
    embeddings = store_embeddings(run_dir, train_store, checkpoint)
    store_embeddings(run_dir, test_store, checkpoint)
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    queries = (PAPER_QUERY, *settings.queries)
    with SQLiteLabelStore(label_store_path(out)) as label_store:
        drawn = draw_labels(
            label_store,
            run_dir,
            train_store,
            clustering,
            queries,
            settings.seeds,
            budgets,
            window_labels,
            embeddings,
        )

    # One task per row; a budget past the active clusters asks the same labels as a smaller
    # one (every cluster), so one row stands for both.
    tasks: list[dict[str, Any]] = []
    empty: list[dict[str, Any]] = []
    seen: set[tuple[str, int, int]] = set()
    for labels in drawn:
        strategies = (
            ("random-scratch", "random-pretrained")
            if labels.strategy == "random"
            else (labels.strategy,)
        )
        for strategy in strategies:
            key = (strategy, labels.budget, labels.seed)
            if key in seen:
                continue
            seen.add(key)
            row = f"{strategy} budget {labels.budget} seed {labels.seed}"
            base = {"strategy": strategy, "query": labels.query, "budget": labels.budget}
            base.update(seed=labels.seed, examples=len(labels.labeled.windows), **labels.quality)
            if len(labels.labeled.windows) == 0:
                # Every answer was a skip: no classifier can be trained, the row says so.
                print(f"table3: {row}: every answer was a skip, no classifier", flush=True)
                empty.append({**base, "mAP": math.nan, "d_prime": math.nan})
                continue
            tasks.append(
                {
                    "row": row,
                    "base": base,
                    "finetune": "cluster" if strategy.startswith("cluster") else strategy,
                    "labeled": labels.labeled,
                    "out_dir": str(
                        out / "runs" / f"{_row_folder(strategy)}-{labels.budget}-seed{labels.seed}"
                    ),
                    "cfg": dataclasses.replace(settings.cfg, seed=labels.seed),
                    "extra": {"budget": labels.budget, "clustering": clustering.name},
                }
            )
    if settings.topline:
        labeled = TrainingSet.from_window_labels([list(x) for x in window_labels])
        base = {"strategy": "all", "query": "", "budget": len(labeled.windows)}
        base.update(seed=settings.cfg.seed, examples=len(labeled.windows))
        tasks.append(
            {
                "row": "topline (every label)",
                "base": base,
                "finetune": "all",
                "labeled": labeled,
                "out_dir": str(out / "runs" / "topline"),
                "cfg": settings.cfg,
                "extra": {},
            }
        )

    context = Context(
        checkpoint=checkpoint,
        train_store=train_store.root,
        test_store=test_store.root,
        test_labels=[list(x) for x in test_labels],
        train_embeddings=store_clusters_dir(run_dir, train_store.root) / EMBEDDINGS_FILE,
        test_embeddings=store_clusters_dir(run_dir, test_store.root) / EMBEDDINGS_FILE,
    )
    workers = settings.workers if settings.workers is not None else default_workers()
    results = run_rows(tasks, context, min(workers, max(1, len(tasks))))
    rows = [
        {
            **task["base"],
            "mAP": result["mAP"],
            "d_prime": result["d_prime"],
            "steps": result["steps"],
            "head_steps": result["head_steps"],
        }
        for task, result in zip(tasks, results, strict=True)
    ]
    return pd.DataFrame(rows + empty)


def _row_folder(strategy: str) -> str:
    """A row's folder name: the strategy with its query as plain characters."""
    return strategy.replace("[", "-").replace("]", "").replace("=", "-").replace(",", "-")


def run_table3(
    run_dir: Path,
    train_store_path: Path,
    test_store_path: Path,
    budgets: Sequence[int],
    out: Path,
    oracle: str = "store",
    cfg: FinetuneConfig | None = None,
    method: ClusterMethod | None = None,
    k: int | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    queries: Sequence[Query] = (),
    topline: bool = True,
    workers: int | None = None,
    head_steps: int = 0,
) -> pd.DataFrame:
    """`coincide reproduce table3`: run the table, write DIR/table3.md, table3.csv (mean and
    spread per row), table3_seeds.csv (every seed) and table3.png, print the table with its
    label-efficiency figures and the time it took. Returns the per-seed rows. Without
    `method` and `k`, the run's own clustering (`cluster.resolve_method`)."""
    from coincide.experiments.table3_report import write_table3

    if not Path(run_dir).is_dir():
        raise UserError(f"run folder {run_dir} does not exist; train it first.")
    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers}: give at least 1.")
    started, cpu_start = time.monotonic(), _cpu_seconds()
    if method is None and head_steps:
        method = "head"
    method, k = resolve_method(Path(run_dir), method, k)
    settings = Table3Settings(
        run=Path(run_dir),
        budgets=tuple(budgets),
        out=Path(out),
        cfg=cfg or FinetuneConfig(),
        method=method,
        k=k,
        head_steps=head_steps,
        seeds=tuple(dict.fromkeys(seeds)),
        queries=tuple(queries),
        topline=topline,
        workers=workers,
        store=Path(train_store_path),
        test_store=Path(test_store_path),
        oracle=oracle,
    )
    train_store = open_store(train_store_path)
    test_store = open_store(test_store_path)
    window_labels = oracle_window_labels(train_store, oracle)
    test_labels = oracle_window_labels(test_store, oracle)
    rows = table3(settings, train_store, test_store, window_labels, test_labels)
    timing = {"wall_s": time.monotonic() - started, "cpu_s": _cpu_seconds() - cpu_start}
    write_table3(rows, settings, train_store, test_store, timing)
    return rows


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the row workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
