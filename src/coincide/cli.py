"""The `coincide` command line: one subcommand per stage, each calling that stage's `run`.

Nothing else lives here: options are parsed, then handed to the stage module.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from coincide.errors import UserError

app = typer.Typer(
    name="coincide",
    help="Turn unlabeled video or audio into a sound classifier with a tiny labeling budget.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Media files or folders (searched recursively).")],
    store: Annotated[Path, typer.Option("--store", help="Feature store folder (created if missing).")],
    labels: Annotated[
        Path | None, typer.Option("--labels", help="CSV with columns path,label (clip-level labels).")
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Decoding processes.")] = 1,
) -> None:
    """Decode media into log-mel windows and 1 Hz frames in a feature store (resumable, idempotent)."""
    from coincide.ingest import run

    raise typer.Exit(run(paths, store, labels_csv=labels, workers=workers))


@app.command()
def info(store: Annotated[Path, typer.Argument(help="Feature store folder.")]) -> None:
    """Print what a feature store holds: media, windows, frames, hours, labels per class."""
    from coincide.ingest import info as run_info

    run_info(store)


@app.command("add-labels")
def add_labels(
    store: Annotated[Path, typer.Argument(help="Feature store folder.")],
    labels: Annotated[Path, typer.Argument(help="CSV with columns path,label.")],
) -> None:
    """Attach clip-level labels (CSV path,label) to media already in a store."""
    from coincide.ingest import add_labels as run_add_labels

    run_add_labels(store, labels)


def main() -> None:
    """Entry point of the console script: user errors end in one sentence and exit code 2."""
    try:
        app()
    except UserError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted; run the same command again to resume.", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
