"""Progress and tables for people, on a terminal and in a log.

On a terminal a progress bar redraws itself in place. Anywhere else (a CI log, `| tee`, a file)
redrawing leaves nothing readable (rich then prints only the final state), so `progress` gives
the same columns as one plain line every `PLAIN_EVERY_S` seconds and a last one when the work
ends. `print_table` never cuts a cell short: on a terminal long cells fold onto more lines, and
elsewhere the table is printed as wide as its longest row, so a path stays whole and greppable.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

# Seconds between two plain progress lines: often enough to see work move in a CI log, rarely
# enough that an hour of ingestion is about 700 lines.
PLAIN_EVERY_S = 5.0


class EtaColumn(TimeRemainingColumn):
    """The time left, labelled ("eta 0:01:10"), so it reads the same in a bar and in a line.

    `label` names what the time is: "eta at most" for work that may end before its total (a
    training stage that its plateau rule ends before the step cap).
    """

    def __init__(self, label: str = "eta", **kw: Any) -> None:
        super().__init__(**kw)
        self.label = label

    def render(self, task: Task) -> Text:
        return Text.assemble(f"{self.label} ", super().render(task))


class ElapsedColumn(TimeElapsedColumn):
    """The time spent, labelled ("0:00:42 elapsed")."""

    def render(self, task: Task) -> Text:
        return Text.assemble(super().render(task), " elapsed")


class PlainProgress(Progress):
    """A `rich.progress.Progress` that draws nothing live: every `every_s` seconds (and when it
    stops) it prints one line per task, made of its columns as plain text (a bar becomes its
    percentage). Same interface as Progress, so callers do not know which one they hold."""

    def __init__(self, *columns: ProgressColumn, every_s: float = PLAIN_EVERY_S, **kw: Any):
        super().__init__(*columns, disable=True, **kw)
        self.every_s = every_s
        self._last_line: float | None = None

    def start(self) -> None:
        self._last_line = self.get_time()

    def stop(self) -> None:
        if self._last_line is not None:
            self._print_lines()
        self._last_line = None

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        if exc_type is not None:  # the error is the news: no last progress line above it
            self._last_line = None
        super().__exit__(exc_type, exc_val, exc_tb)

    def update(self, task_id: TaskID, **kw: Any) -> None:  # type: ignore[override]
        super().update(task_id, **kw)
        self._maybe_print()

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_print()

    def _maybe_print(self) -> None:
        if self._last_line is not None and self.get_time() - self._last_line >= self.every_s:
            self._print_lines()

    def _print_lines(self) -> None:
        self._last_line = self.get_time()
        for task in self.tasks:
            if task.visible:
                self.console.print(
                    plain_line(self.columns, task), markup=False, highlight=False, soft_wrap=True
                )


def plain_line(columns: Any, task: Task) -> str:
    """A task's progress columns as one line of text."""
    parts = []
    for column in columns:
        if isinstance(column, BarColumn):
            parts.append(f"{task.percentage:.0f}%" if task.total else "")
        elif isinstance(column, ProgressColumn):
            shown = column(task)
            parts.append(shown.plain if isinstance(shown, Text) else "")
        else:  # a format string, as Progress accepts
            parts.append(str(column).format(task=task))
    return "  ".join(part.strip() for part in parts if part.strip())


def progress(
    *columns: ProgressColumn,
    console: Console | None = None,
    transient: bool = False,
    enabled: bool = True,
    every_s: float = PLAIN_EVERY_S,
) -> Progress:
    """The progress display of long work: a live bar on a terminal, plain lines elsewhere,
    nothing when not `enabled`. Use as rich's Progress (a context manager, or start/stop)."""
    console = console or Console()
    if not enabled:
        return Progress(*columns, console=console, disable=True)
    if console.is_terminal and not console.is_dumb_terminal:
        return Progress(*columns, console=console, transient=transient)
    return PlainProgress(*columns, console=console, every_s=every_s)


def print_table(table: Table, console: Console | None = None) -> None:
    """Print a table without cutting any cell short (see the module docstring)."""
    console = console or Console()
    for column in table.columns:
        if column.overflow == "ellipsis":
            column.overflow = "fold"
    if console.is_terminal:
        console.print(table)
        return
    wide = console.options.update_width(1 << 20)
    width = Measurement.get(console, wide, table).maximum
    if table.title is not None:  # a title wraps to the table's width: keep it on one line too
        width = max(width, Measurement.get(console, wide, table.title).maximum)
    Console(
        file=console.file, width=width, color_system=None, force_terminal=False, highlight=False
    ).print(table)


class FilesProgress:
    """The progress of work over media files (ingest, predict, embed): a bar advanced by bytes
    (so its ETA holds for files of any length) with "3/10 files" and "1,200 windows/s".

        with FilesProgress("embed", files, console) as bar:
            for path in files:
                ...  # notes go to bar.console, above the bar
                bar.file_done(path, windows_of_this_file)
    """

    def __init__(self, name: str, files: Sequence[str | Path], console: Console | None = None):
        self.sizes = {str(path): _file_size(path) for path in files}
        self.count, self.done, self.windows = len(files), 0, 0
        self.progress = progress(
            TextColumn(name),
            BarColumn(),
            TextColumn("{task.fields[files]}"),
            TextColumn("{task.fields[rate]}"),
            EtaColumn(),
            console=console,
            transient=True,
        )
        self.console = self.progress.console

    def __enter__(self) -> FilesProgress:
        self.progress.__enter__()
        total = max(sum(self.sizes.values()), 1)
        self.task = self.progress.add_task("", total=total, files="", rate="")
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def file_done(self, path: str | Path, windows: int) -> None:
        """One more file done (read or skipped), with `windows` windows."""
        self.done += 1
        self.windows += windows
        rate = self.windows / max(time.perf_counter() - self.started, 1e-9)
        self.progress.update(
            self.task,
            advance=self.sizes.get(str(path), 0),
            files=f"{self.done}/{self.count} files",
            rate=f"{rate:,.0f} windows/s",
        )


def _file_size(path: str | Path) -> int:
    """Bytes of a file; 0 for what is not a readable file (it is skipped with its reason)."""
    try:
        return os.stat(path).st_size if os.path.isfile(path) else 0
    except OSError:
        return 0


def printable(path: str | Path) -> str:
    """A path as printable text, even when its name holds bytes that are not UTF-8."""
    return str(path).encode("utf-8", "backslashreplace").decode("utf-8")


def say(console: Console, text: str) -> None:
    """Print a line as it is: no markup, no highlighting, no wrapping (paths stay greppable)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)
