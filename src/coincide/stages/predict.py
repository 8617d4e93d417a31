"""`coincide predict`: class scores for every second of new media, and labels for each clip.

Each file is read block by block (`coincide.media.decode.iter_features`, `BLOCK_WINDOWS` = 64
windows at a time) and every block is scored as it arrives, so an hour-long recording needs the
memory of one block plus its (n_windows, C) scores, not of its audio (the test measures 1 MiB
more peak memory for an hour than for ten seconds). The clip score of a class is the mean of its
window scores (paper 4.2, as `coincide finetune` evaluates). Files that cannot be read are
skipped with one line each, as ingestion does.

Labels: with `--threshold T` every class scoring at least T; with `--top K` the K best classes;
by default the best class for a softmax classifier, and the classes scoring at least 0.5 for a
multi-label one (a sigmoid per class).

Outputs (any together):
- stdout, by `--format`: `table` (default) a table of each clip's labels; `csv` or `json` the
  documents below, streamed as the files are scored (progress and notes go to stderr);
- `--csv FILE`: one row per window (`scope` = second) and one per clip (`scope` = clip), with
  columns media_path, scope, time_s, duration_s, labels (joined by ";") and one score per class;
- `--json FILE`: {"settings" (`PredictSettings.record()`), "classes", "media": [{media_path,
  duration_s, clip: {scores, labels}, seconds: [{time_s, scores, labels}]}], "skipped":
  [{media_path, reason}]}.
Files are written as the media are scored (each file's rows at once) and appear under their
final name only when complete.
"""

from __future__ import annotations

import csv
import json
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar

import numpy as np
from rich.console import Console
from rich.table import Table

from coincide.config.stage import StageSettings
from coincide.console import FilesProgress, print_table, printable, say
from coincide.errors import MediaError, UserError
from coincide.files import atomic_output
from coincide.models.inference import (
    BLOCK_WINDOWS,
    LabelRule,
    SoundModel,
    load_model,
)


@dataclass
class FilePrediction:
    """The scores of one media file.

    time_s: `(n,)` start of each window in seconds; window_scores: `(n, C)` float32;
    clip_scores: `(C,)` their mean; duration_s: the audio's duration.
    """

    media_path: str
    time_s: np.ndarray
    window_scores: np.ndarray
    clip_scores: np.ndarray
    duration_s: float


def predict_file(
    model: SoundModel, path: Path, block_windows: int = BLOCK_WINDOWS
) -> FilePrediction:
    """Score every window of a media file, streaming it in blocks of `block_windows` windows.

    Raises MediaError when the file cannot be read (possibly after part of it was decoded).
    """
    from coincide.media.decode import iter_features

    model.require_classifier()
    times, scores = [], []
    duration_s = 0.0
    for block in iter_features(Path(path), block_windows=block_windows):
        times.append(block.time_s)
        scores.append(model.score_logmel(block.logmel))
        duration_s = block.duration_s
    window_scores = np.concatenate(scores)
    return FilePrediction(
        media_path=printable(path),
        time_s=np.concatenate(times),
        window_scores=window_scores,
        clip_scores=window_scores.mean(axis=0),
        duration_s=duration_s,
    )


# ---------------------------------------------------------------------------------------------
# Writers


def _score_text(value: float) -> str:
    return f"{value:.7g}"


class _CsvOut:
    def __init__(
        self, stream: IO[str], classes: list[str], rule: LabelRule, settings: dict[str, Any]
    ) -> None:
        """`settings` are not written: a CSV has one kind of row."""
        self.writer = csv.writer(stream)
        self.writer.writerow(["media_path", "scope", "time_s", "duration_s", "labels", *classes])
        self.classes, self.rule = classes, rule

    def add(self, result: FilePrediction) -> None:
        labels = self.rule.labels(result.window_scores, self.classes)
        for t, names, row in zip(result.time_s, labels, result.window_scores, strict=True):
            scores = [_score_text(v) for v in row]
            self.writer.writerow(
                [result.media_path, "second", f"{t:g}", "", ";".join(names), *scores]
            )
        clip_labels = self.rule.labels(result.clip_scores[None], self.classes)[0]
        self.writer.writerow(
            [
                result.media_path,
                "clip",
                "0",
                f"{result.duration_s:.3f}",
                ";".join(clip_labels),
                *[_score_text(v) for v in result.clip_scores],
            ]
        )

    def close(self, skipped: list[dict[str, str]]) -> None:
        """Skipped files are reported on the terminal only: a CSV has one kind of row."""


class _JsonOut:
    """Streams the JSON document: the media list is written one file at a time."""

    def __init__(
        self, stream: IO[str], classes: list[str], rule: LabelRule, settings: dict[str, Any]
    ) -> None:
        self.stream, self.classes, self.rule = stream, classes, rule
        self.stream.write(
            '{"settings": ' + json.dumps(settings) + ', "classes": ' + json.dumps(classes)
        )
        self.stream.write(', "media": [')
        self.first = True

    def add(self, result: FilePrediction) -> None:
        labels = self.rule.labels(result.window_scores, self.classes)
        entry = {
            "media_path": result.media_path,
            "duration_s": round(result.duration_s, 3),
            "clip": {
                "scores": [float(_score_text(v)) for v in result.clip_scores],
                "labels": self.rule.labels(result.clip_scores[None], self.classes)[0],
            },
            "seconds": [
                {
                    "time_s": float(t),
                    "scores": [float(_score_text(v)) for v in row],
                    "labels": names,
                }
                for t, row, names in zip(result.time_s, result.window_scores, labels, strict=True)
            ],
        }
        self.stream.write(("\n" if self.first else ",\n") + json.dumps(entry))
        self.first = False

    def close(self, skipped: list[dict[str, str]]) -> None:
        self.stream.write('\n], "skipped": ' + json.dumps(skipped) + "}\n")


STDOUT_WRITERS = {"csv": _CsvOut, "json": _JsonOut}


def _clip_table(results: list[tuple[str, float, list[str], list[float]]]) -> Table:
    table = Table(title="clip labels")
    table.add_column("media")
    table.add_column("seconds", justify="right")
    table.add_column("labels (clip score)")
    for path, duration, names, scores in results:
        shown = ", ".join(f"{n} ({s:.3f})" for n, s in zip(names, scores, strict=True)) or "-"
        table.add_row(path, f"{duration:.1f}", shown)
    return table


# ---------------------------------------------------------------------------------------------
# The command


def _predict_all(
    model: SoundModel,
    files: list[Path],
    writers: list[_CsvOut | _JsonOut],
    rule: LabelRule,
    console: Console,
) -> tuple[list[dict[str, str]], list[tuple[str, float, list[str], list[float]]], int]:
    """Score every file, feeding `writers`; returns (skipped, clip rows for the table, windows)."""
    skipped: list[dict[str, str]] = []
    rows: list[tuple[str, float, list[str], list[float]]] = []
    with FilesProgress("predict", files, console) as progress:
        for path in files:
            try:
                result = predict_file(model, path)
            except MediaError as err:
                skipped.append({"media_path": printable(path), "reason": str(err)})
                say(progress.console, f"skipped {printable(path)}: {err}")
                progress.file_done(path, 0)
                continue
            for writer in writers:
                writer.add(result)
            chosen = rule.indices(result.clip_scores[None])[0]
            names = [model.classes[c] for c in chosen]
            scores = [float(result.clip_scores[c]) for c in chosen]
            rows.append((printable(path), result.duration_s, names, scores))
            progress.file_done(path, len(result.time_s))
    if len(skipped) < len(files):
        for writer in writers:
            writer.close(skipped)
    return skipped, rows, progress.windows


@dataclass(frozen=True)
class PredictSettings(StageSettings):
    """`coincide predict`: the model, the media files and folders, what stdout shows (`fmt`:
    table, csv or json), files to write as well (`csv_out`, `json_out`), the label rule
    (`threshold` or `top`) and the device (None: auto). Kept in the JSON document."""

    command: ClassVar[str] = "predict"
    model: Path
    paths: tuple[Path, ...]
    fmt: str = "table"
    csv_out: Path | None = None
    json_out: Path | None = None
    threshold: float | None = None
    top: int | None = None
    device: str | None = None


def run(settings: PredictSettings, console: Console | None = None) -> int:
    """Predict labels for media files and folders with a run's classifier; returns 0.

    Raises UserError for a model without classifier, a bad flag, no media found, or when every
    file was skipped (then no output file is written).
    """
    paths = settings.paths
    fmt = settings.fmt
    csv_out = settings.csv_out
    json_out = settings.json_out

    from coincide.stages.ingest import find_media

    console = console or Console(stderr=True)
    model = load_model(settings.model, settings.device)
    model.require_classifier()
    rule = LabelRule.for_model(model, settings.threshold, settings.top)
    files = find_media(paths)
    if not files:
        shown = " ".join(printable(p) for p in paths)
        raise UserError(f"no media files under {shown}; give media files or folders.")

    with ExitStack() as outputs:
        writers: list[_CsvOut | _JsonOut] = []
        for path, kind in ((csv_out, _CsvOut), (json_out, _JsonOut)):
            if path is not None:
                stream = outputs.enter_context(atomic_output(path, newline=""))
                writers.append(kind(stream, model.classes, rule, settings.record()))
        if fmt in STDOUT_WRITERS:
            writers.append(STDOUT_WRITERS[fmt](sys.stdout, model.classes, rule, settings.record()))
        skipped, rows, windows = _predict_all(model, files, writers, rule, console)
        if len(skipped) == len(files):
            raise UserError(
                f"none of the {len(files)} media files could be read; the reasons are printed "
                "above."
            )
    if fmt == "table":
        print_table(_clip_table(rows))
    written = [printable(p) for p in (csv_out, json_out) if p is not None]
    where = f"; wrote {' and '.join(written)}" if written else ""
    say(
        console,
        f"{len(files)} files: {len(files) - len(skipped)} predicted ({windows} seconds), "
        f"{len(skipped)} skipped{where}",
    )
    return 0
