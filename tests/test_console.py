"""Progress and tables off a terminal: plain lines every few seconds, cells never cut short."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from coincide.console import EtaColumn, FilesProgress, PlainProgress, print_table, progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def file_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=80), out


def test_off_a_terminal_progress_is_one_plain_line_every_few_seconds() -> None:
    console, out = file_console()
    clock = Clock()
    columns = (TextColumn("ingest"), BarColumn(), TextColumn("{task.fields[files]}"), EtaColumn())
    with PlainProgress(*columns, console=console, every_s=5.0, get_time=clock) as bar:
        task = bar.add_task("", total=10, files="")
        for done in range(1, 11):
            clock.now += 1.0
            bar.update(task, advance=1, files=f"{done}/10 files")
    lines = out.getvalue().splitlines()
    # Updates at 1..10 s: lines at 5 s and 10 s, and one when the work ends.
    assert [line.split("  ")[:3] for line in lines] == [
        ["ingest", "50%", "5/10 files"],
        ["ingest", "100%", "10/10 files"],
        ["ingest", "100%", "10/10 files"],
    ]
    assert all(line.split("  ")[3].startswith("eta ") for line in lines)
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_progress_picks_a_bar_on_a_terminal_and_lines_elsewhere() -> None:
    terminal = Console(file=io.StringIO(), force_terminal=True)
    assert type(progress(TextColumn("x"), console=terminal)) is Progress
    console, out = file_console()
    assert isinstance(progress(TextColumn("x"), console=console), PlainProgress)
    quiet = progress(TextColumn("x"), console=console, enabled=False)
    with quiet:
        quiet.update(quiet.add_task("", total=1), advance=1)
    assert out.getvalue() == ""
    files = [Path(__file__), Path(__file__).parent / "missing.wav"]
    with FilesProgress("predict", files, console) as bar:
        bar.file_done(files[1], 0)  # a file that cannot be read advances by nothing
        bar.file_done(files[0], 3)
    assert out.getvalue().startswith("predict  100%  2/2 files  ")
    assert bar.windows == 3 and "windows/s  eta " in out.getvalue()


def long_table() -> tuple[Table, str]:
    path = "/data/" + "/".join(f"fixture-af6f{i:02d}-long-folder-name" for i in range(6))
    path += "/dog_barking_0001.wav"
    table = Table(title=f"hits near {path}")
    table.add_column("#", justify="right")
    table.add_column("media")
    table.add_column("distance", justify="right")
    table.add_row("1", path, "0.125")
    return table, path


def test_a_table_in_a_file_keeps_every_cell_whole_on_one_line() -> None:
    table, path = long_table()
    assert len(path) > 200
    console, out = file_console()
    print_table(table, console)
    lines = out.getvalue().splitlines()
    row = next(line for line in lines if "0.125" in line)
    assert path in row and "…" not in out.getvalue()
    assert f"hits near {path}" in lines[0]  # the title too stays on one line


def test_a_table_on_a_narrow_terminal_folds_a_long_cell_instead_of_cutting_it() -> None:
    table, path = long_table()
    out = io.StringIO()
    print_table(table, Console(file=out, width=70, force_terminal=True, color_system=None))
    text = out.getvalue()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 70
    cells = [line.split("│")[2].strip() for line in text.splitlines() if line.count("│") == 4]
    assert "".join(cells) == path


def test_work_that_fails_ends_with_its_error_not_a_progress_line() -> None:
    console, out = file_console()
    try:
        with PlainProgress(TextColumn("ingest"), console=console) as bar:
            bar.add_task("", total=2)
            raise OSError("disk full")
    except OSError:
        pass
    assert out.getvalue() == ""


def test_a_stage_its_plateau_rule_may_end_early_shows_an_upper_bound_on_the_time_left(
    tmp_path, capsys
):
    """The bar of a stage runs to its step cap; with a plateau rule the stage usually ends
    well before it, so the time left is labelled as the bound it is."""
    from coincide.train.monitor import Monitor

    for may_end_early in (True, False):
        run_dir = tmp_path / str(may_end_early)
        run_dir.mkdir()
        monitor = Monitor(run_dir, ["total"], resume_step=0, progress=True)
        monitor.start_stage("aa", 6000, 0, may_end_early=may_end_early)
        monitor.advance(10)
        monitor.end_stage()
        monitor.close()
        last = capsys.readouterr().out.splitlines()[-1]
        assert last.startswith("aa  0%  10/6000")
        assert ("eta at most " in last) is may_end_early and "eta " in last
