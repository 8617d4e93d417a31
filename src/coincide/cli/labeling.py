"""The consolidation commands of the CLI: `cluster`, `label`, `labels export|import`,
`finetune` (parsing only; `coincide.cli.commands` registers them, the work is in their stage
modules)."""

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
    LabelDb,
    LabeledRun,
    MemberOption,
    MethodOption,
    Multilabel,
    OnlySession,
    OrderOption,
    PagePort,
    TrainedRun,
    finetune_config,
)
from coincide.cli.vocab import VocabGroup
from coincide.config.choices import (
    FinetuneStrategy,
    LabelsFormat,
    LabelStrategy,
)


def cluster(
    run: TrainedRun,
    store: Annotated[Path, typer.Option("--store", help="Feature store whose windows to cluster.")],
    method: MethodOption = None,
    k: ClustersOption = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint", help="Checkpoint (default RUN/checkpoints/best.pt, best held-out)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Windows per pass.")] = 512,
    seed: Annotated[int, typer.Option("--seed", help="k-means seed.")] = 0,
    head_steps: Annotated[
        int,
        typer.Option(
            "--head-steps", min=0, help="Train p_clust N more steps on the frozen embeddings."
        ),
    ] = 0,
) -> None:
    """Assign every window of a store to its arg-max cluster (or k-means), with sizes."""
    from coincide.stages.cluster import ClusterSettings
    from coincide.stages.cluster import run as run_cluster

    run_cluster(ClusterSettings(run, store, method, k, checkpoint, batch_size, seed, head_steps))


def label(
    run: Annotated[Path, typer.Argument(help="Run folder with a clustering of the store.")],
    store: Annotated[Path, typer.Option("--store", help="Feature store that was clustered.")],
    budget: Annotated[int, typer.Option("--budget", min=1, help="Labels to ask (N clusters).")],
    oracle: Annotated[
        str | None,
        typer.Option("--oracle", help="Simulated annotator: 'store' or a path,label CSV."),
    ] = None,
    strategy: Annotated[
        LabelStrategy,
        typer.Option("--strategy", help="cluster (propagate) or random (N windows)."),
    ] = "cluster",
    select: OrderOption = "random",
    member: MemberOption = "random",
    checks: Annotated[
        int,
        typer.Option(
            "--checks", min=0, help="Ask a check (another member) after every N clusters."
        ),
    ] = 0,
    session: Annotated[
        str | None, typer.Option("--session", help="Session name (default: cluster / random).")
    ] = None,
    db: LabelDb = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the selection.")] = 0,
    method: MethodOption = None,
    k: ClustersOption = None,
    head_steps: Annotated[
        int, typer.Option("--head-steps", min=0, help="The clustering of `cluster --head-steps`.")
    ] = 0,
    serve: Annotated[
        bool, typer.Option("--serve", help="Label in a web page (until Ctrl+C), then propagate.")
    ] = False,
    host: Annotated[
        str, typer.Option("--host", help="Page address; not loopback: a token is required.")
    ] = "127.0.0.1",
    port: PagePort = 8750,
    vocab: Annotated[
        Path | None,
        typer.Option("--vocab", help="Label suggestions: text list or AudioSet ontology.json."),
    ] = None,
    annotator: Annotated[
        str | None, typer.Option("--annotator", help="Default annotator name in the page.")
    ] = None,
) -> None:
    """Label clusters (one member each, propagated to the cluster) or random windows."""
    from coincide.stages.label import LabelSettings
    from coincide.stages.label import run as run_label

    run_label(
        LabelSettings(
            run,
            store,
            budget,
            oracle,
            strategy,
            select,
            member,
            session,
            db,
            seed,
            method,
            k,
            serve=serve,
            host=host,
            port=port,
            vocab=vocab,
            annotator=annotator,
            head_steps=head_steps,
            check_every=checks,
        )
    )


labels_app = typer.Typer(
    cls=VocabGroup, help="Labels given in labeling sessions.", no_args_is_help=True
)


@labels_app.command("export")
def labels_export(
    run: LabeledRun,
    fmt: Annotated[
        LabelsFormat,
        typer.Option("--format", help="csv (one row per label), json, or label-studio (tasks)."),
    ] = "csv",
    session: OnlySession = None,
    db: LabelDb = None,
    store: Annotated[
        Path | None, typer.Option("--store", help="Feature store (default: the session's).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder (default RUN/labels/<session>/).")
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option("--model", help="label-studio: classifier whose labels pre-annotate."),
    ] = None,
    vocab: Annotated[
        Path | None, typer.Option("--vocab", help="label-studio: more labels to offer.")
    ] = None,
    context: Annotated[
        float, typer.Option("--context", help="label-studio: seconds of audio around a window.")
    ] = 2.0,
    document_root: Annotated[
        Path | None,
        typer.Option(
            "--document-root", help="label-studio: LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT."
        ),
    ] = None,
) -> None:
    """Write a session's answers and propagated window labels, or Label Studio tasks."""
    if fmt == "label-studio":
        from coincide.labelui.label_studio_export import run as run_label_studio

        run_label_studio(
            run,
            session,
            db,
            store,
            out,
            model=model,
            vocab=vocab,
            context_s=context,
            document_root=document_root,
        )
        return
    from coincide.labelui.export import run as run_export

    run_export(run, fmt, session, db, store, out)


@labels_app.command("import")
def labels_import(
    run: LabeledRun,
    export: Annotated[Path, typer.Argument(help="Label Studio's JSON export of the tasks.")],
    session: OnlySession = None,
    db: LabelDb = None,
) -> None:
    """Add Label Studio's annotations of exported tasks to the label store, as answers."""
    from coincide.labelui.label_studio_import import run as run_import

    run_import(run, export, session, db)


def finetune(
    run: Annotated[Path, typer.Argument(help="Run folder (curriculum checkpoint, labels).")],
    store: Annotated[Path, typer.Option("--store", help="Feature store the labels refer to.")],
    strategy: Annotated[
        FinetuneStrategy,
        typer.Option(
            "--strategy", help="cluster, random-scratch, random-pretrained or all (topline)."
        ),
    ] = "cluster",
    session: Annotated[
        str | None, typer.Option("--session", help="Labeling session (default by strategy).")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option("--name", help="Name of its folder RUN/finetune/NAME (default: strategy)."),
    ] = None,
    test_store: Annotated[
        Path | None, typer.Option("--test-store", help="Labeled store to score clips on.")
    ] = None,
    oracle: Annotated[
        str, typer.Option("--oracle", help="Labels for --strategy all: 'store' or a CSV.")
    ] = "store",
    steps: FinetuneSteps = 2000,
    batch_size: FinetuneBatch = 64,
    lr: FinetuneLr = 3e-4,
    multilabel: Multilabel = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of batches and fresh weights.")] = 0,
    early_stop: EarlyStop = True,
    with_search: Annotated[
        bool,
        typer.Option("--with-search", help="Add the answers of the store's search sessions."),
    ] = False,
    db: LabelDb = None,
) -> None:
    """Fine-tune f with a classifier p_class on labeled windows (L_class only); score clips."""
    from coincide.stages.finetune import FinetuneSettings
    from coincide.stages.finetune import run as run_finetune

    cfg = finetune_config(steps, batch_size, lr, multilabel, seed, early_stop)
    run_finetune(
        FinetuneSettings(
            run, store, strategy, session, name, test_store, oracle, None, cfg, with_search, db
        )
    )
