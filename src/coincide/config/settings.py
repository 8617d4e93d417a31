"""Training configuration: typed dataclasses, YAML presets, `--set key.sub=value` overrides.

How a configuration is made (`load_config`):
1. `--config` names (`paper`, `small`, `laptop`, the Table 1 row overlays `row_e` ... `row_k`)
   or YAML files, deep-merged left to right: the first is a complete preset, later ones are
   overlays that change a few keys (`--config small --config row_f`). A file may start from
   another with `base: NAME` (`laptop` is `base: small` plus longer stages).
2. `--set key.sub=value` overrides, applied in order. Values are parsed as YAML, so
   `optim.lr=3e-4` is a float, `curriculum.stages=[av]` a list and `log.progress=false` a bool.
   A list element is addressed by its position: `curriculum.stages.0.max_steps=50`.
3. The merged tree becomes `Config` (typed, validated); an unknown or missing key is a
   `UserError` naming it. `save_config` writes the resolved result (RUN/config.yaml), which is
   itself a complete configuration: `--config RUN/config.yaml` reproduces the run.

The presets have one home, `src/coincide/config/presets/` inside the package (so they ship in the
wheel and are read with importlib.resources); `--config NAME` reads `NAME.yaml` from there, and
`--config FILE.yaml` reads a file of your own (which may start from a preset with `base: NAME`).

The curriculum (paper 3.4) is a list of stages. A stage is either a recipe name, whose loss
weights follow from alpha and beta:

    av        L_AV
    aa        L_AA
    coin      (1 - alpha) L_AV + alpha L_AA                                    = L_coin
    joint     (1 - beta) L_coin + beta L_clust                                 = L_joint
    aa_clust  (1 - beta) L_AA + beta L_clust     (the audio-only joint stage)
    clust     L_clust

or a mapping `{name, losses: {term: weight}, max_steps, plateau}` where missing keys come from
the recipe and the curriculum's defaults. Loss terms are named as in `coincide.train.objective`
(`av`, `aa`, `clust`).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from coincide.config.tree import (
    apply_override,
    as_fraction,
    build_dataclass,
    deep_merge,
    read_yaml,
    unknown_message,
)
from coincide.data.augment import AugmentConfig
from coincide.errors import UserError
from coincide.files import write_text_atomic
from coincide.models.encoders import EncoderConfig

# Loss weights of each named stage recipe as a function of (alpha, beta): paper section 3.4.
STAGE_RECIPES: dict[str, Callable[[float, float], dict[str, float]]] = {
    "av": lambda alpha, beta: {"av": 1.0},
    "aa": lambda alpha, beta: {"aa": 1.0},
    "coin": lambda alpha, beta: {"av": 1.0 - alpha, "aa": alpha},
    "joint": lambda alpha, beta: {
        "av": (1.0 - beta) * (1.0 - alpha),
        "aa": (1.0 - beta) * alpha,
        "clust": beta,
    },
    "aa_clust": lambda alpha, beta: {"aa": 1.0 - beta, "clust": beta},
    "clust": lambda alpha, beta: {"clust": 1.0},
}


@dataclass
class ModelConfig:
    """The networks: f (`audio`), g (`image`) and the coincidence heads p_AA, p_AV.

    Both encoders must have the same `embed_dim` (d): p_AV reads [f(x1), g(x2)].
    The cluster head's size is in `ClusteringConfig`.
    head_dropout: dropout probability on the coincidence heads' hidden layer while training
        (0 = the paper's heads; a regulariser for small stores).
    coincidence_head: "mlp" (the paper's p_AA / p_AV on [e1, e2]) or "cosine" (a learned scale
        and bias on cos(e1, e2); `coincidence_hidden` and `head_dropout` then do nothing).
    """

    audio: EncoderConfig
    image: EncoderConfig
    coincidence_hidden: int
    head_dropout: float = 0.0
    coincidence_head: Literal["mlp", "cosine"] = "mlp"

    def __post_init__(self) -> None:
        if self.audio.modality != "audio" or self.image.modality != "image":
            raise UserError(
                "model.audio.modality must be 'audio' and model.image.modality 'image'; "
                "fix the model section of the config."
            )
        if self.audio.embed_dim != self.image.embed_dim:
            raise UserError(
                f"model.audio.embed_dim ({self.audio.embed_dim}) and model.image.embed_dim "
                f"({self.image.embed_dim}) differ; set both to the same d."
            )
        _positive("model.coincidence_hidden", self.coincidence_hidden)
        if not 0.0 <= self.head_dropout < 1.0:
            raise UserError(
                f"model.head_dropout is {self.head_dropout}; use a probability in [0, 1)."
            )

    @property
    def embed_dim(self) -> int:
        """d, the embedding size shared by f and g."""
        return self.audio.embed_dim


@dataclass
class DataConfig:
    """Coincidence pairs and batches (see `coincide.data.pairs` for the exact rule).

    delta_t: coincidence time scale Delta_T in seconds (10 in the paper; <= 1 for AV means the
        frame of the anchor window itself, the "overlapping frames" of L3).
    batch_size: B, pairs per batch over all ranks (the all-pairs negatives span all of it).
    weighting: "windows" (anchor uniform over windows) or "media" (uniform over media).
    workers: DataLoader worker processes (0 reads in the training process).
    prefetch: batches each worker keeps ready.
    neighbour_batches: the fraction of training batches whose media are one randomly drawn
        media and B - 1 of its nearest neighbours under f (`coincide.train.neighbours`): every
        negative is one f finds alike. 0: the paper's batches of B media drawn at random.
    neighbour_pool: a neighbour batch draws its B - 1 media from the pool x B nearest.
    neighbour_refresh: steps between two computations of the media's neighbours under f.
    """

    delta_t: float
    batch_size: int
    weighting: Literal["windows", "media"]
    workers: int
    prefetch: int
    neighbour_batches: float = 0.0
    neighbour_pool: float = 2.0
    neighbour_refresh: int = 250

    def __post_init__(self) -> None:
        if self.delta_t <= 0:
            raise UserError(f"data.delta_t is {self.delta_t}; set a positive number of seconds.")
        _positive("data.batch_size", self.batch_size)
        if self.batch_size < 2:
            raise UserError("data.batch_size must be at least 2 (negatives come from the batch).")
        _non_negative("data.workers", self.workers)
        _positive("data.prefetch", self.prefetch)
        if not 0.0 <= self.neighbour_batches <= 1.0:
            raise UserError(
                f"data.neighbour_batches is {self.neighbour_batches}; use a fraction in [0, 1]."
            )
        if self.neighbour_pool < 1.0:
            raise UserError(f"data.neighbour_pool is {self.neighbour_pool}; use 1 or more.")
        _positive("data.neighbour_refresh", self.neighbour_refresh)


@dataclass
class ClusteringConfig:
    """p_clust and L_clust (paper 3.2): K clusters, diversity gamma, cosine logit scale.

    collapse_fraction: warn when fewer than this fraction of the clusters that could be active
        are (the assignments of a logging interval can fill at most min(K, assignments)).
    """

    K: int
    gamma: float
    scale: float
    collapse_fraction: float
    # What `coincide cluster`, `label` and `reproduce table3` use unless told otherwise: the
    # trained head p_clust, or k-means with K centres on the run's frozen embeddings. A default
    # so that configs saved before the key existed still load (they meant the head).
    method: str = "head"

    def __post_init__(self) -> None:
        if self.K < 2:
            raise UserError(f"clustering.K is {self.K}; use at least 2 clusters.")
        if self.method not in ("head", "kmeans"):
            raise UserError(f"clustering.method is {self.method!r}; use head or kmeans.")
        _positive("clustering.scale", self.scale)


@dataclass
class PlateauConfig:
    """The "until convergence" rule of a stage.

    Every `eval_every` steps the stage's held-out coincidence loss is measured; a measurement
    that is not below best * (1 - rel_eps) (relative to |best|) counts as a miss, and the stage
    ends after `patience` misses in a row, but never before `min_steps`.
    patience = 0 turns the rule off (the stage runs to its step cap).
    """

    eval_every: int
    patience: int
    rel_eps: float
    min_steps: int

    def __post_init__(self) -> None:
        _positive("plateau.eval_every", self.eval_every)
        _non_negative("plateau.patience", self.patience)
        _non_negative("plateau.min_steps", self.min_steps)


@dataclass
class StageConfig:
    """One curriculum stage: a weighted sum of loss terms, trained to a plateau or a step cap."""

    name: str
    losses: dict[str, float]
    max_steps: int
    plateau: PlateauConfig

    def __post_init__(self) -> None:
        if not self.losses:
            raise UserError(f"stage '{self.name}' has no losses; give it at least one term.")
        _positive(f"stage '{self.name}' max_steps", self.max_steps)


@dataclass
class CurriculumConfig:
    """The stages to train, in order (paper 3.4), and their shared defaults.

    stages: used when the store has frames; audio_only_stages: used when it has none.
    negatives: "all" (the B(B-1) in-batch negatives of eq. 1-2) or "random" (one per positive,
        the L3 recipe and Table 1 row h).
    restore_best: end each stage at its best held-out weights (RUN/checkpoints/best.pt), so the
        next stage starts from what generalized rather than from the last, possibly memorizing,
        weights. False keeps the last weights.
    aa_batchnorm: how f embeds the anchors and their L_AA partners. "shared": one forward pass
        over both (one BatchNorm batch, the cheaper pass); "per_branch": one pass each, so no
        BatchNorm statistic mixes a window with its partner (the leak MoCo's shuffled BN
        guards against: coincidence solved from batch statistics).
    hard_negatives: beta of the importance weights on the all-pairs negatives
        (`coincide.losses.CoincidenceLoss`): 0 is the paper's uniform mean; beta > 0 weights each
        anchor's negatives by softmax(beta * logit), the hardest most.
    """

    alpha: float
    beta: float
    negatives: Literal["all", "random"]
    max_steps: int
    plateau: PlateauConfig
    stages: list[StageConfig]
    audio_only_stages: list[StageConfig]
    restore_best: bool = True
    aa_batchnorm: Literal["shared", "per_branch"] = "shared"
    hard_negatives: float = 0.0

    def __post_init__(self) -> None:
        _non_negative("curriculum.hard_negatives", self.hard_negatives)

    def stages_for(self, audio_only: bool) -> list[StageConfig]:
        """The stages a store trains: `audio_only_stages` when it has no frames."""
        return self.audio_only_stages if audio_only else self.stages


@dataclass
class OptimConfig:
    """Adam (AdamW when weight_decay > 0), one optimizer for the whole curriculum.

    schedule: "constant" or "cosine" (to 0 over each stage's max_steps), after a linear warmup
        of warmup_steps at the start of every stage (new heads join at stage starts).
    grad_accum: batches whose gradients are summed per optimizer step (each batch keeps its
        own B(B-1) negatives). grad_clip: max global grad norm, 0 = off.
    amp: "auto" (bf16 autocast on CUDA, fp32 on CPU), "bf16" or "fp32".
    compile: torch.compile the per-stage training step: true, false, or "auto" (on CUDA only).
        channels_last: conv memory format on CUDA.
    """

    lr: float
    weight_decay: float
    schedule: Literal["constant", "cosine"]
    warmup_steps: int
    grad_accum: int
    grad_clip: float
    amp: Literal["auto", "bf16", "fp32"]
    compile: Literal["auto"] | bool
    channels_last: bool

    def __post_init__(self) -> None:
        _positive("optim.lr", self.lr)
        _non_negative("optim.weight_decay", self.weight_decay)
        _non_negative("optim.warmup_steps", self.warmup_steps)
        _positive("optim.grad_accum", self.grad_accum)
        _non_negative("optim.grad_clip", self.grad_clip)


@dataclass
class EvalConfig:
    """The held-out validation pairs behind the plateau rule.

    val_fraction: fraction of media held out of training (at least 2 media).
    val_pairs: number of coinciding pairs in the fixed, seeded validation set.
    """

    val_fraction: float
    val_pairs: int

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise UserError(f"eval.val_fraction is {self.val_fraction}; use a value in (0, 1).")
        _positive("eval.val_pairs", self.val_pairs)


@dataclass
class LogConfig:
    """every: steps between log lines / TensorBoard points; checkpoint_every: steps between
    checkpoints (also written at every stage end); progress: show the progress bar."""

    every: int
    checkpoint_every: int
    progress: bool

    def __post_init__(self) -> None:
        _positive("log.every", self.every)
        _positive("log.checkpoint_every", self.checkpoint_every)


@dataclass
class Config:
    """A whole training configuration (the content of RUN/config.yaml).

    seed: seeds the model initialisation, the held-out split and every batch stream.
    device: "auto" (CUDA when available), "cuda" or "cpu".
    augment: training-batch augmentation (`coincide.data.augment`); all off when the section is
        missing, so configurations written before it existed still load.
    """

    seed: int
    device: Literal["auto", "cuda", "cpu"]
    model: ModelConfig
    data: DataConfig
    clustering: ClusteringConfig
    curriculum: CurriculumConfig
    optim: OptimConfig
    eval: EvalConfig
    log: LogConfig
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        _non_negative("seed", self.seed)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain data (YAML / checkpoint friendly)."""
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Loading


def _preset_folder() -> Any:
    # Package data (see pyproject's package-data), not a Python package: no __init__.py needed.
    return resources.files("coincide.config") / "presets"


def preset_names() -> list[str]:
    """Names accepted by `--config` besides file paths (the YAML files shipped in the package)."""
    folder = _preset_folder()
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_config_source(source: str | Path, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The YAML mapping of a preset name (`paper`, `row_f`, ...) or of a YAML file path.

    A mapping with a top-level `base: NAME` (a preset or a path) is that source's mapping with
    the rest merged over it (`laptop` is `small` with longer stages).
    """
    data = _read_yaml_mapping(source)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or str(base) in _seen or len(_seen) > 8:
        raise UserError(
            f"--config {source}: its 'base: {base}' must name one other preset or YAML file, "
            "without a cycle; fix the file."
        )
    return deep_merge(read_config_source(base, (*_seen, str(source))), data)


def _read_yaml_mapping(source: str | Path) -> dict[str, Any]:
    text: str
    origin: str
    path = Path(source)
    preset = _preset_folder() / f"{source}.yaml"
    if isinstance(source, str) and "/" not in source and preset.is_file():
        text, origin = preset.read_text(encoding="utf-8"), f"preset '{source}'"
    elif path.is_file():
        text, origin = path.read_text(encoding="utf-8"), str(path)
    else:
        raise UserError(
            f"--config {source} is neither a preset ({', '.join(preset_names())}) nor a YAML "
            "file; give one of those."
        )
    try:
        data = read_yaml(text)
    except yaml.YAMLError as err:
        raise UserError(f"cannot parse {origin} as YAML ({err}); fix the file.") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{origin} must hold a YAML mapping of config sections; fix the file.")
    return data


def load_config(
    sources: Sequence[str | Path] = ("small",), overrides: Sequence[str] = ()
) -> Config:
    """Merge the `--config` sources left to right, apply `--set key=value` overrides, validate.

    sources: preset names or YAML paths; overrides: strings "dotted.key=yaml value".
    """
    if not sources:
        raise UserError("no --config given; name a preset (small, paper) or a YAML file.")
    tree: dict[str, Any] = {}
    for source in sources:
        tree = deep_merge(tree, read_config_source(source))
    for override in overrides:
        apply_override(tree, override)
    return config_from_dict(tree)


# ---------------------------------------------------------------------------------------------
# Typed construction


def config_from_dict(tree: Mapping[str, Any]) -> Config:
    """Build and validate a `Config` from a merged raw tree (unknown / missing keys: UserError)."""
    tree = dict(tree)
    curriculum = tree.pop("curriculum", None)
    config_fields = {f.name for f in dataclasses.fields(Config)}
    if curriculum is None:
        raise UserError("config key 'curriculum' is missing; start from --config small or paper.")
    partial = {**tree, "curriculum": _resolve_curriculum(curriculum)}
    unknown = set(partial) - config_fields
    if unknown:
        raise UserError(unknown_message(sorted(unknown)[0], Config))
    return typing.cast(Config, build_dataclass(Config, partial, ""))


def _resolve_curriculum(raw: Any) -> dict[str, Any]:
    """Expand stage recipe names into full stage mappings (losses, max_steps, plateau)."""
    if not isinstance(raw, dict):
        raise UserError("config key 'curriculum' must be a mapping; fix the config.")
    raw = dict(raw)
    for key in ("alpha", "beta", "max_steps", "plateau"):
        if key not in raw:
            raise UserError(f"config key 'curriculum.{key}' is missing; add it to the config.")
    alpha = as_fraction("curriculum.alpha", raw["alpha"])
    beta = as_fraction("curriculum.beta", raw["beta"])
    if not isinstance(raw["plateau"], dict):
        raise UserError("config key 'curriculum.plateau' must be a mapping; fix the config.")
    for list_key in ("stages", "audio_only_stages"):
        entries = raw.get(list_key)
        if not isinstance(entries, list) or not entries:
            raise UserError(
                f"config key 'curriculum.{list_key}' must be a non-empty list of stages "
                f"(recipes: {', '.join(STAGE_RECIPES)})."
            )
        raw[list_key] = [
            _resolve_stage(entry, f"curriculum.{list_key}.{i}", alpha, beta, raw)
            for i, entry in enumerate(entries)
        ]
    return raw


def _resolve_stage(
    entry: Any, where: str, alpha: float, beta: float, curriculum: Mapping[str, Any]
) -> dict[str, Any]:
    stage = {"name": entry} if isinstance(entry, str) else entry
    if not isinstance(stage, dict) or not isinstance(stage.get("name"), str):
        raise UserError(f"config key '{where}' must be a recipe name or a mapping with a name.")
    stage = dict(stage)
    name = stage["name"]
    if "losses" not in stage:
        if name not in STAGE_RECIPES:
            raise UserError(
                f"stage '{name}' ({where}) is not a recipe ({', '.join(STAGE_RECIPES)}); "
                "use one or give the stage its own 'losses' weights."
            )
        stage["losses"] = STAGE_RECIPES[name](alpha, beta)
    stage.setdefault("max_steps", curriculum["max_steps"])
    plateau = stage.get("plateau", {})
    if not isinstance(plateau, dict):
        raise UserError(f"config key '{where}.plateau' must be a mapping; fix the config.")
    stage["plateau"] = {**curriculum["plateau"], **plateau}
    return stage


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise UserError(f"{name} is {value}; it must be positive.")


def _non_negative(name: str, value: float) -> None:
    if value < 0:
        raise UserError(f"{name} is {value}; it must not be negative.")


# ---------------------------------------------------------------------------------------------
# Writing


# A run's resolved configuration: RUN/config.yaml (`--config RUN/config.yaml` reproduces it).


def save_config(config: Config, path: Path) -> None:
    """Write the resolved configuration as YAML (atomically: temp file, then rename)."""
    write_text_atomic(path, config_to_yaml(config))


def config_to_yaml(config: Config) -> str:
    """The resolved configuration as YAML text (sections in dataclass order)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=None)


__all__ = [
    "AugmentConfig",
    "ClusteringConfig",
    "Config",
    "CurriculumConfig",
    "DataConfig",
    "EvalConfig",
    "LogConfig",
    "ModelConfig",
    "OptimConfig",
    "PlateauConfig",
    "STAGE_RECIPES",
    "StageConfig",
    "apply_override",
    "config_from_dict",
    "config_to_yaml",
    "deep_merge",
    "load_config",
    "preset_names",
    "read_config_source",
    "save_config",
]
