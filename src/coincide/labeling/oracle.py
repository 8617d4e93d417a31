"""The simulated annotator of the paper's experiments: the clip-level labels of a window's clip
answer the labeling requests (`coincide label --oracle store|LABELS.csv`, Tables 2 and 3)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from coincide.errors import UserError
from coincide.store.features import FeatureStore
from coincide.store.labels import LabelStore, Request, Session
from coincide.store.media_labels import read_labels_csv

ORACLE_ANNOTATOR = "oracle"


class Oracle(Protocol):
    """Answers "what is in this window?" with a list of labels (empty: it cannot say)."""

    def __call__(self, window_index: int) -> Sequence[str]: ...


@dataclass
class WindowLabelOracle:
    """The paper's simulated annotator: the clip-level labels of the window's clip.

    `window_labels[i]` is the label list of window i (its clip's labels); `calls` counts the
    questions asked, so a test can check that nothing was asked twice.
    """

    window_labels: Sequence[Sequence[str]]
    calls: int = 0

    def __call__(self, window_index: int) -> Sequence[str]:
        self.calls += 1
        return list(self.window_labels[window_index])


def oracle_window_labels(store: FeatureStore, source: str | Path) -> list[list[str]]:
    """The label list of every window of `store`, from `source`: "store" (the store's own
    clip-level labels) or a CSV file `path,label` (one row per label; paths as ingested).

    Returns:
        `n` lists of labels, row i for window i (empty for a clip with no label).
    """
    index = store.index
    if str(source) == "store":
        window_labels = [list(labels) for labels in index["labels"]]
        if not any(window_labels):
            raise UserError(
                f"feature store {store.root} has no labels to simulate the annotator with; "
                "attach them with `coincide add-labels` or give --oracle LABELS.csv."
            )
        return window_labels
    csv_path = Path(source)
    if not csv_path.is_file():
        raise UserError(f"--oracle {csv_path} is not a file; give a path,label CSV or 'store'.")
    by_path: dict[str, set[str]] = {}
    for path, label in read_labels_csv(csv_path).rows:
        by_path.setdefault(str(path), set()).add(label)
    paths = index["media_path"].to_numpy()
    if not set(by_path) & set(paths):
        raise UserError(
            f"no path in {csv_path} matches a media file of the store {store.root}; "
            "give the paths as they were ingested (relative to the CSV's folder)."
        )
    return [sorted(by_path.get(str(p), ())) for p in paths]


def answer_with_oracle(
    label_store: LabelStore, session: Session, requests: Iterable[Request], oracle: Oracle
) -> int:
    """Answer every pending request in `requests` with the oracle, each answer committed as it
    is given (a crash loses at most the question being asked); answered requests are not asked
    again. Labels become a `label` answer, no label a `skip`. Returns the number answered."""
    answered = 0
    for request in requests:
        if request.state == "answered":
            continue
        labels = list(oracle(request.window_index))
        label_store.answer(
            session.id,
            request.cluster_id,
            request.window_index,
            labels,
            "label" if labels else "skip",
            ORACLE_ANNOTATOR,
        )
        answered += 1
    return answered
