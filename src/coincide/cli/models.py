"""The commands that use a trained model: predict, embed, search, export (parsing only; the
work is in the modules of the same names). `coincide.cli.commands` registers them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coincide.cli.options import Device, LabelDb, MediaPaths, ModelFolder, PagePort
from coincide.config.choices import OutputFormat


def predict(
    run: ModelFolder,
    paths: MediaPaths,
    fmt: Annotated[
        OutputFormat,
        typer.Option(
            "--format", help="stdout: a table of clip labels, or the csv / json of --csv / --json."
        ),
    ] = "table",
    csv_out: Annotated[
        Path | None,
        typer.Option("--csv", help="Write FILE: a row per second and per clip, with scores."),
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Write FILE: per media its clip and per-second scores."),
    ] = None,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Label every class scoring >= T.")
    ] = None,
    top: Annotated[
        int | None, typer.Option("--top", min=1, help="Label the K best classes of each row.")
    ] = None,
    device: Device = "auto",
) -> None:
    """Class scores for every second of media files, and labels for each clip."""
    from coincide.stages.predict import PredictSettings
    from coincide.stages.predict import run as run_predict

    settings = PredictSettings(run, tuple(paths), fmt, csv_out, json_out, threshold, top, device)
    raise typer.Exit(run_predict(settings))


def embed(
    run: ModelFolder,
    paths: MediaPaths,
    parquet: Annotated[
        Path, typer.Option("--parquet", help="FILE.parquet: media_path, time_s, embedding.")
    ],
    device: Device = "auto",
) -> None:
    """Write the embedding of every second of media files to a Parquet table."""
    from coincide.stages.embed import EmbedSettings
    from coincide.stages.embed import run as run_embed

    raise typer.Exit(run_embed(EmbedSettings(run, tuple(paths), parquet, device)))


def search(
    run: ModelFolder,
    store: Annotated[Path, typer.Option("--store", help="Feature store to search in.")],
    query: Annotated[
        str | None,
        typer.Option("--query", help="MEDIA or MEDIA@SECONDS: the example to search for."),
    ] = None,
    query_window: Annotated[
        int | None,
        typer.Option("--query-window", min=0, help="A window of the store as the example."),
    ] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Number of hits.")] = 10,
    html: Annotated[
        Path | None, typer.Option("--html", help="Write OUT.html with a player per hit.")
    ] = None,
    nprobe: Annotated[
        int | None,
        typer.Option("--nprobe", min=1, help="Index lists scanned (large stores; default auto)."),
    ] = None,
    device: Device = "auto",
    exclude_same_media: Annotated[
        bool,
        typer.Option("--exclude-same-media", help="Leave out every window of the query's media."),
    ] = False,
    fmt: Annotated[
        OutputFormat, typer.Option("--format", help="How hits are printed on stdout.")
    ] = "table",
    label_as: Annotated[
        str | None,
        typer.Option("--label-as", help="Ask of each hit: is this CLASS? (a search session)."),
    ] = None,
    session: Annotated[
        str | None, typer.Option("--session", help="Search session (default from class, query).")
    ] = None,
    db: LabelDb = None,
    oracle: Annotated[
        str | None, typer.Option("--oracle", help="Answer from labels: 'store' or a CSV.")
    ] = None,
    serve: Annotated[
        bool, typer.Option("--serve", help="Answer the hits in the labeling page.")
    ] = False,
    port: PagePort = 8750,
) -> None:
    """Find the store windows that sound most like an example (cosine distance).

    The query's own window is never a hit; --exclude-same-media leaves out its whole media.
    --label-as CLASS asks of each hit whether it is one (a search session for the labeling
    page, which `finetune --with-search` adds to the labels).
    """
    from coincide.stages.search import SearchSettings
    from coincide.stages.search import run as run_search

    run_search(
        SearchSettings(
            run,
            store,
            query,
            query_window,
            top,
            html,
            nprobe,
            device,
            exclude_same_media,
            fmt,
            label_as,
            session,
            db,
            oracle,
            serve,
            port=port,
        )
    )


def export(
    run: Annotated[
        Path, typer.Argument(help="Run folder, fine-tuning folder or checkpoint to export.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for the exported model.")],
    onnx: Annotated[
        bool, typer.Option("--onnx/--no-onnx", help="Also write model.onnx (waveform in).")
    ] = True,
) -> None:
    """Export f and the classifier: safetensors, config.json, labels.txt and an ONNX graph."""
    from coincide.stages.export import ExportSettings
    from coincide.stages.export import run as run_export

    raise typer.Exit(run_export(ExportSettings(run, out, onnx)))
