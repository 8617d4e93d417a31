"""The arguments and options that several commands share, declared once (parsing only).

Each is a `typing.Annotated` alias: a command names it as a parameter's type and gives the
default (`db: LabelDb = None`), so the flag, its type and its help are the same wherever it is
used. An option whose help differs from one command to the next is declared in its command.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from coincide.config.choices import ClusterMethod, ClusterOrder, MemberChoice

if TYPE_CHECKING:
    from coincide.classifier.train import FinetuneConfig

# Run folders and stores.
TrainedRun = Annotated[Path, typer.Argument(help="Run folder (from `coincide train`).")]
LabeledRun = Annotated[Path, typer.Argument(help="Run folder holding the label store.")]
ModelFolder = Annotated[
    Path, typer.Argument(help="Run folder, fine-tuning folder, checkpoint or export folder.")
]
StoreFolder = Annotated[Path, typer.Option("--store", help="Feature store folder.")]
MediaPaths = Annotated[
    list[Path], typer.Argument(help="Media files or folders (searched recursively).")
]
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]

# Labels: the label store of every command that reads or writes labels, the session of
# `labels export|import`, the simulated annotator of `reproduce table2|table3`, the port of
# the labeling page (label, search).
LabelDb = Annotated[
    Path | None, typer.Option("--db", help="Label store (default RUN/labels.sqlite).")
]
OnlySession = Annotated[
    str | None, typer.Option("--session", help="Session name (default: the only one).")
]
StoreOracle = Annotated[str, typer.Option("--oracle", help="'store' or a path,label CSV.")]
PagePort = Annotated[int, typer.Option("--port", min=0, max=65535, help="Page port.")]

# How a command picks its clustering (cluster, label, reproduce table3).
MethodOption = Annotated[
    ClusterMethod | None,
    typer.Option(
        "--method", help="head (p_clust) or kmeans (on f); default: the run's clustering.method."
    ),
]
ClustersOption = Annotated[
    int | None, typer.Option("--clusters", min=1, help="k-means centres (default: the run's K).")
]
# Which clusters are asked first and which member is shown (label, reproduce table2).
OrderOption = Annotated[
    ClusterOrder,
    typer.Option("--select", help="Cluster order: random (paper), size or size-uncertainty."),
]
MemberOption = Annotated[
    MemberChoice,
    typer.Option("--member", help="Member shown: random (paper), medoid or typical."),
]

# The shallow classifier of `evaluate` and `reproduce table1`.
MaxTrainWindows = Annotated[
    int, typer.Option("--max-train-windows", min=1, help="Cap on classifier training windows.")
]

# How p_class is trained (`classifier.train.FinetuneConfig`): `finetune` and `reproduce table3`.
EarlyStop = Annotated[
    bool,
    typer.Option(
        "--early-stop/--fixed-steps",
        help="Steps chosen on held-out labeled media (default), or exactly --steps.",
    ),
]
FinetuneSteps = Annotated[int, typer.Option("--steps", min=1, help="Most optimizer steps.")]
FinetuneBatch = Annotated[int, typer.Option("--batch-size", min=1, help="Windows per step.")]
FinetuneLr = Annotated[float, typer.Option("--lr", help="AdamW learning rate.")]
Multilabel = Annotated[
    bool | None,
    typer.Option(
        "--multilabel/--single-label", help="Sigmoid or softmax (default: from the labels)."
    ),
]


def finetune_config(
    steps: int, batch_size: int, lr: float, multilabel: bool | None, seed: int, early_stop: bool
) -> FinetuneConfig:
    """The classifier training of the options above."""
    from coincide.classifier.train import FinetuneConfig

    return FinetuneConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        multilabel=multilabel,
        seed=seed,
        early_stop=early_stop,
    )
