"""`coincide reproduce table1|table2|table3`: the paper's tables, one command each (parsing
only; the work is in coincide.experiments: table1, table2 and table3)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coincide.cli.options import (
    ClustersOption,
    EarlyStop,
    FinetuneBatch,
    FinetuneLr,
    FinetuneSteps,
    MaxTrainWindows,
    MemberOption,
    MethodOption,
    Multilabel,
    OrderOption,
    StoreOracle,
    finetune_config,
)
from coincide.cli.vocab import VocabGroup
from coincide.config.choices import Pooling
from coincide.errors import UserError

reproduce_app = typer.Typer(
    cls=VocabGroup,
    help="Reproduce the paper's tables on a benchmark, one command per table.",
    no_args_is_help=True,
)


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise UserError(f"{flag} {text!r} is not a comma-separated list of integers.") from err


@reproduce_app.command("table1")
def reproduce_table1(
    store: Annotated[Path, typer.Option("--store", help="Labeled store to train every row on.")],
    test_store: Annotated[Path, typer.Option("--test-store", help="Labeled store to measure on.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for runs/ and table1.md.")],
    config: Annotated[
        str, typer.Option("--config", help="Base preset (small, paper) or YAML file.")
    ] = "small",
    rows: Annotated[
        str, typer.Option("--row", help="Rows to run, e.g. a,b,e,f (a and b always run).")
    ] = "a,b,c,d,e,f,g,h,i,j,k",
    seeds: Annotated[str, typer.Option("--seed", help="Training seeds, e.g. 0,1,2.")] = "0",
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key of every row: key.sub=value."),
    ] = None,
    logmel_pooling: Annotated[
        Pooling,
        typer.Option("--logmel-pooling", help="Row b: flatten (6144-d) or mean_std (128-d)."),
    ] = "flatten",
    max_train_windows: MaxTrainWindows = 20000,
    eval_every: Annotated[
        int,
        typer.Option(
            "--eval-every", min=0, help="Steps between QbE measurements on --test-store (0: off)."
        ),
    ] = 0,
) -> None:
    """Table 1: train every row the data supports, measure each, write table1.md (resumable)."""
    from coincide.experiments.table1 import Table1Settings, parse_rows
    from coincide.experiments.table1 import run as run_table1

    seed_list = tuple(_int_list(seeds, "--seed"))
    if not seed_list:
        raise UserError("--seed is empty; give at least one seed, e.g. --seed 0.")
    settings = Table1Settings(
        train_store=store,
        test_store=test_store,
        out=out,
        config=config,
        rows=parse_rows(rows),
        seeds=seed_list,
        overrides=tuple(overrides or ()),
        logmel_pooling=logmel_pooling,
        max_train_windows=max_train_windows,
        eval_every=eval_every,
    )
    run_table1(settings)


@reproduce_app.command("table2")
def reproduce_table2(
    run: Annotated[list[Path], typer.Argument(help="Runs with a p_clust (one per K).")],
    store: Annotated[Path, typer.Option("--store", help="Labeled store to cluster and score.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for table2.md and table2.csv.")],
    oracle: StoreOracle = "store",
    k: Annotated[
        str,
        typer.Option("--clusters", help="K1,K2,...: k-means rows on the first run's embeddings."),
    ] = "",
    budgets: Annotated[
        str, typer.Option("--budget", help="Clusters labeled per row (default 0.37 K).")
    ] = "",
    select: OrderOption = "random",
    member: MemberOption = "random",
    seed: Annotated[int, typer.Option("--seed", help="Seed of selection and k-means.")] = 0,
    head_steps: Annotated[
        str,
        typer.Option("--head-steps", help="N1,N2,...: rows of p_clust trained N more steps."),
    ] = "",
    kmeans_at_head_k: Annotated[
        bool,
        typer.Option(
            "--kmeans-at-head-k/--no-kmeans-at-head-k",
            help="A k-means row at each head's K, on the same embeddings.",
        ),
    ] = True,
) -> None:
    """Table 2: K, active clusters, V-measure, labeled, label recall and precision."""
    from coincide.experiments.table2 import Table2Settings, run_table2

    settings = Table2Settings(
        tuple(run),
        store,
        out,
        oracle,
        tuple(_int_list(k, "--clusters")),
        tuple(_int_list(budgets, "--budget")) or None,
        order=select,
        member=member,
        seed=seed,
        head_steps=tuple(_int_list(head_steps, "--head-steps")),
        kmeans_at_head_k=kmeans_at_head_k,
    )
    run_table2(settings)


@reproduce_app.command("table3")
def reproduce_table3(
    run: Annotated[Path, typer.Argument(help="Curriculum run (checkpoint + p_clust).")],
    store: Annotated[Path, typer.Option("--store", help="Store to label and train on.")],
    test_store: Annotated[Path, typer.Option("--test-store", help="Labeled store to score on.")],
    budgets: Annotated[str, typer.Option("--budget", help="Label budgets, e.g. 10,20,50,100.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for table3.md/.csv/.png and runs.")],
    oracle: StoreOracle = "store",
    method: MethodOption = None,
    k: ClustersOption = None,
    head_steps: Annotated[
        int, typer.Option("--head-steps", min=0, help="p_clust trained N more steps first.")
    ] = 0,
    seeds: Annotated[
        str, typer.Option("--seed", help="Label draws (and row training seeds), e.g. 0,1,2.")
    ] = "0,1,2",
    queries: Annotated[
        str,
        typer.Option(
            "--queries",
            help="Extra cluster rows: member=medoid|typical, order=size|size-uncertainty, "
            "checks=N, or all.",
        ),
    ] = "",
    steps: FinetuneSteps = 2000,
    batch_size: FinetuneBatch = 64,
    lr: FinetuneLr = 3e-4,
    early_stop: EarlyStop = True,
    multilabel: Multilabel = None,
    topline: Annotated[
        bool, typer.Option("--topline/--no-topline", help="Also train on all labels.")
    ] = True,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, help="Rows trained at once (default: one per core)."),
    ] = None,
) -> None:
    """Table 3: mAP and d' against label budget for random and cluster labeling (mean and
    spread over label draws), label-efficiency ratios, and a plot."""
    from coincide.experiments.table3 import parse_queries, run_table3

    seed_list = _int_list(seeds, "--seed")
    if not seed_list:
        raise UserError("--seed is empty; give at least one label draw, e.g. --seed 0.")
    cfg = finetune_config(steps, batch_size, lr, multilabel, seed_list[0], early_stop)
    run_table3(
        run,
        store,
        test_store,
        _int_list(budgets, "--budget"),
        out,
        oracle,
        cfg,
        method,
        k,
        seeds=seed_list,
        queries=parse_queries(queries),
        topline=topline,
        workers=workers,
        head_steps=head_steps,
    )
