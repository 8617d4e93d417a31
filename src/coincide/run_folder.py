"""Where things live inside a run folder: every name in it spelled once, here (a feature store's
are in `coincide.store.layout`).

```
RUN/
  config.yaml               the resolved training configuration (`coincide train`)
  settings.json             the options of the last `coincide train` (each stage's output folder
                            below has the settings.json of the command that made it)
  state.json                finished stages and where training is
  init_from.json            the weights f started from (`train --init-from`), when given
  checkpoints/last.pt       where training is (resumable); stage<N>_<name>.pt per finished stage
  checkpoints/best.pt       the best held-out weights of the newest measured stage (+ best.json)
  train_log.csv  tb/  plots/    the training curves: CSV, TensorBoard, PNG per stage
  eval_curve.csv            held-out QbE during training (`train --test-store`)
  representation.json       a fixed representation instead of weights (Table 1 row b)
  eval/metrics.json|md      `coincide evaluate`
  clusters/<store>/         `coincide cluster`: embeddings and one folder per clustering
  labels.sqlite             the label store: every question and answer of every session
  labels/<session>/         `coincide label`: the propagated labels of a session
  finetune/<name>/          `coincide finetune`: checkpoint.pt, finetune.json, metrics.json
  search/                   `coincide search`: the embedding index of each store searched
  report.html               `coincide report`
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "config.yaml"
STATE_FILE = "state.json"
INIT_FILE = "init_from.json"
CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
BEST_INFO = "best.json"
LOG_FILE = "train_log.csv"
TB_DIR = "tb"
PLOTS_DIR = "plots"
CURVE_FILE = "eval_curve.csv"
REPRESENTATION_FILE = "representation.json"
EVAL_DIR = "eval"
METRICS_FILE = "metrics.json"
METRICS_TABLE = "metrics.md"
CLUSTERS_DIR = "clusters"
LABEL_STORE_FILE = "labels.sqlite"
LABELS_DIR = "labels"
FINETUNE_DIR = "finetune"
FINETUNE_CHECKPOINT = "checkpoint.pt"
FINETUNE_SETTINGS = "finetune.json"
SEARCH_DIR = "search"
REPORT_FILE = "report.html"


class _Below:
    """A fixed path below a run folder's root, read as an attribute of a `RunFolder`."""

    def __init__(self, *parts: str) -> None:
        self.parts = parts

    def __get__(self, folder: RunFolder | None, owner: type | None = None) -> Path:
        if folder is None:
            raise AttributeError("a run folder's paths are read from a RunFolder(root)")
        return folder.root.joinpath(*self.parts)


@dataclass(frozen=True)
class RunFolder:
    """The named paths of one run folder (nothing is created or checked here)."""

    root: Path

    config = _Below(CONFIG_FILE)
    state = _Below(STATE_FILE)
    checkpoints = _Below(CHECKPOINTS_DIR)
    last_checkpoint = _Below(CHECKPOINTS_DIR, LAST_CHECKPOINT)
    best_checkpoint = _Below(CHECKPOINTS_DIR, BEST_CHECKPOINT)
    eval_dir = _Below(EVAL_DIR)
    label_store = _Below(LABEL_STORE_FILE)
    report = _Below(REPORT_FILE)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def clusters(self, store_root: Path) -> Path:
        """`RUN/clusters/<store folder name>/`: the clusterings and embeddings of one store."""
        return self.root / CLUSTERS_DIR / Path(store_root).resolve().name

    def labels(self, session: str) -> Path:
        """`RUN/labels/<session>/`: a labeling session's propagated labels."""
        return self.root / LABELS_DIR / session

    def finetune(self, name: str) -> Path:
        """`RUN/finetune/<name>/`: one fine-tuning."""
        return self.root / FINETUNE_DIR / name
