"""The closed vocabularies of options, one `Literal` per kind of choice.

They are the one source for the command line (Typer validates a value against them and lists
them in `--help` and docs/cli.md) and for the stages' type hints. Nothing heavy is imported
here: `coincide --help` reads this module.
"""

from __future__ import annotations

from typing import Literal, get_args

ClusterMethod = Literal["head", "kmeans"]
LabelStrategy = Literal["cluster", "random"]
ClusterOrder = Literal["random", "size", "size-uncertainty"]
MemberChoice = Literal["random", "medoid", "typical"]
FinetuneStrategy = Literal["cluster", "random-scratch", "random-pretrained", "all"]
LabelsFormat = Literal["csv", "json", "label-studio"]
OutputFormat = Literal["table", "csv", "json"]
Projection = Literal["pca", "tsne"]
Pooling = Literal["flatten", "mean_std"]
BenchPreset = Literal["demo", "avmnist"]
SceneModel = Literal["shared", "independent"]

CLUSTER_METHODS: tuple[str, ...] = get_args(ClusterMethod)
LABEL_STRATEGIES: tuple[str, ...] = get_args(LabelStrategy)
FINETUNE_STRATEGIES: tuple[str, ...] = get_args(FinetuneStrategy)
LABELS_FORMATS: tuple[str, ...] = get_args(LabelsFormat)
PROJECTIONS: tuple[str, ...] = get_args(Projection)
POOLINGS: tuple[str, ...] = get_args(Pooling)
BENCH_PRESETS: tuple[str, ...] = get_args(BenchPreset)
SCENE_MODELS: tuple[str, ...] = get_args(SceneModel)
