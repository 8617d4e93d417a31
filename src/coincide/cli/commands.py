"""The `coincide` command line: one subcommand per stage, each calling that stage's `run`.

Nothing else lives here: options are parsed, then handed to the stage module. The vocabulary
(which arguments are positional, what --store and --out mean) is written down by hand at the
head of docs/cli.md, whose rest `python -m coincide.cli.docs` generates from these parsers; old
spellings are upgraded by `coincide.cli.vocab`. The commands that use a trained model
(predict, embed, search, export) are in `coincide.cli.models`.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from coincide.cli.options import MaxTrainWindows, MediaPaths, StoreFolder, TrainedRun
from coincide.cli.vocab import VocabGroup
from coincide.config.choices import (
    BenchPreset,
    Projection,
    SceneModel,
)
from coincide.errors import UserError

app = typer.Typer(
    name="coincide",
    cls=VocabGroup,
    help="Turn unlabeled video or audio into a sound classifier with a tiny labeling budget.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"coincide {version('coincide')}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Turn unlabeled video or audio into a sound classifier with a tiny labeling budget."""


@app.command()
def ingest(
    paths: MediaPaths,
    store: Annotated[
        Path, typer.Option("--store", help="Feature store folder (created if missing).")
    ],
    labels: Annotated[
        Path | None,
        typer.Option("--labels", help="CSV with columns path,label (clip-level labels)."),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Decoding processes.")] = 1,
    chunk_windows: Annotated[
        int, typer.Option("--chunk-windows", min=1, help="Windows per store chunk (about).")
    ] = 4096,
) -> None:
    """Decode media into log-mel windows and 1 Hz frames in a feature store (resumable)."""
    from coincide.stages.ingest import IngestSettings, run

    raise typer.Exit(run(IngestSettings(tuple(paths), store, labels, workers, chunk_windows)))


@app.command()
def info(store: StoreFolder) -> None:
    """Print what a feature store holds: media, windows, frames, hours, labels per class."""
    from coincide.stages.ingest import info as run_info

    run_info(store)


@app.command("add-labels")
def add_labels(
    store: StoreFolder,
    labels: Annotated[Path, typer.Option("--labels", help="CSV with columns path,label.")],
) -> None:
    """Attach clip-level labels (CSV path,label) to media already in a store."""
    from coincide.stages.ingest import add_labels as run_add_labels

    run_add_labels(store, labels)


@app.command("make-bench")
def make_bench(
    out: Annotated[
        Path, typer.Option("--out", help="Folder for the benchmark (train/, test/, CSVs).")
    ],
    preset: Annotated[
        BenchPreset | None,
        typer.Option("--preset", help="demo (bundled data) or avmnist (FSDD+MNIST+ESC-50)."),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Folder with fsdd/, mnist/, esc50_subset/.")
    ] = None,
    sounds: Annotated[
        Path | None, typer.Option("--sounds", help="CSV path,label[,split][,group] of sounds.")
    ] = None,
    images: Annotated[
        Path | None, typer.Option("--images", help="CSV path,label[,split][,group] of images.")
    ] = None,
    backgrounds: Annotated[
        Path | None,
        typer.Option("--backgrounds", help="CSV path[,split][,group] of ambient recordings."),
    ] = None,
    image_backgrounds: Annotated[
        Path | None,
        typer.Option("--image-backgrounds", help="CSV path[,split] of background pictures."),
    ] = None,
    pairing: Annotated[
        Path | None,
        typer.Option("--pairing", help="CSV sound_label,image_label (default: identity)."),
    ] = None,
    clips: Annotated[
        int | None, typer.Option("--clips", min=1, help="Train clips (default: the preset's).")
    ] = None,
    test_clips: Annotated[
        int | None, typer.Option("--test-clips", min=0, help="Test clips (default: clips / 3).")
    ] = None,
    val_clips: Annotated[
        int | None,
        typer.Option("--val-clips", min=0, help="Validation clips (default: clips / 5)."),
    ] = None,
    scene: Annotated[
        SceneModel,
        typer.Option(
            "--scene",
            help="shared: a scene per clip ties ambience to picture background and light; "
            "independent: only the class links sound and picture.",
        ),
    ] = "shared",
    scenes: Annotated[int, typer.Option("--scenes", min=1, help="Scenes per split.")] = 8,
    sync_visibility: Annotated[
        bool,
        typer.Option("--sync-visibility", help="Show the image only in seconds it sounds in."),
    ] = False,
    seconds: Annotated[int, typer.Option("--seconds", min=1, help="Seconds per clip.")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every random choice.")] = 0,
    zipf: Annotated[
        float, typer.Option("--zipf", min=0.0, help="Class prior exponent (0 = uniform).")
    ] = 1.0,
    density: Annotated[
        float, typer.Option("--density", help="Share of seconds with an instance onset.")
    ] = 0.8,
    snr_db: Annotated[
        tuple[float, float],
        typer.Option("--snr-db", help="LOW HIGH: instance over background RMS, dB."),
    ] = (0.0, 15.0),
    distractor_prob: Annotated[
        float, typer.Option("--distractor-prob", help="Share of clips with a distractor.")
    ] = 0.25,
    fps: Annotated[int, typer.Option("--fps", min=1, help="Video frames per second.")] = 4,
    size: Annotated[int, typer.Option("--size", help="Frame width and height, px.")] = 128,
    sample_rate: Annotated[int, typer.Option("--sample-rate", help="Audio rate, Hz.")] = 16000,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Encoding processes.")] = 1,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a benchmark already in OUT.")
    ] = False,
) -> None:
    """Compose benchmark mp4 videos from real labeled sounds and images, with labels and events."""
    from coincide.benchdata.compose import run
    from coincide.benchdata.params import BenchParams
    from coincide.benchdata.presets import SourceArgs

    params = BenchParams(
        clips=clips,
        test_clips=test_clips,
        val_clips=val_clips,
        seconds=seconds,
        seed=seed,
        zipf=zipf,
        density=density,
        snr_db=snr_db,
        distractor_prob=distractor_prob,
        fps=fps,
        size=size,
        sample_rate=sample_rate,
        scene=scene,
        scenes=scenes,
        sync_visibility=sync_visibility,
    )
    sources = SourceArgs(preset, data_dir, sounds, images, backgrounds, image_backgrounds, pairing)
    raise typer.Exit(run(out, params, sources, workers=workers, force=force))


@app.command()
def train(
    run: Annotated[Path, typer.Argument(help="Run folder; one that holds a checkpoint resumes.")],
    store: Annotated[
        Path, typer.Option("--store", help="Feature store to train on (from `coincide ingest`).")
    ],
    config: Annotated[
        list[str] | None,
        typer.Option(
            "--config",
            help="Preset (laptop, demo, small, paper, row_a, row_c..row_k) or YAML file; repeat to "
            "overlay. Default: the run's config.yaml, else laptop (demo: what `make demo` trains).",
        ),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key: key.sub=value (repeatable)."),
    ] = None,
    test_store: Annotated[
        Path | None,
        typer.Option(
            "--test-store",
            help="Labeled held-out store: QbE mAP during training (RUN/eval_curve.csv).",
        ),
    ] = None,
    eval_every: Annotated[
        int, typer.Option("--eval-every", min=0, help="Steps between QbE measurements.")
    ] = 0,
    init_from: Annotated[
        Path | None,
        typer.Option(
            "--init-from",
            help="Start f from these weights: a state dict file of the audio encoder, or a "
            "coincide run / export folder (a new run only; resuming keeps its own).",
        ),
    ] = None,
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc",
            min=1,
            help="Processes on this machine (one per GPU; gloo on the CPU), started by torch's "
            "elastic agent as torchrun would.",
        ),
    ] = 1,
) -> None:
    """Train the curriculum (aa -> coin -> joint; audio-only: aa -> aa_clust), resumably.

    Several GPUs (or CPU processes) of one machine: --nproc N.

    Several machines: torchrun ... -m coincide.cli train RUN --store STORE (no -- needed).
    """
    from coincide.stages.train import TrainSettings

    settings = TrainSettings(
        store, run, tuple(config or ()), tuple(overrides or ()), test_store, eval_every, init_from
    )
    if nproc > 1:
        from coincide.train.launch import launch

        launch(nproc, "coincide.stages.train:run", settings)
    else:
        from coincide.stages.train import run as run_training

        run_training(settings)


# The consolidation commands (cluster, label, labels export|import, finetune) live in
# coincide.cli.labeling.
from coincide.cli.labeling import cluster, finetune, label, labels_app  # noqa: E402

app.command()(cluster)
app.command()(label)
app.add_typer(labels_app, name="labels")
app.command()(finetune)


@app.command()
def evaluate(
    run: TrainedRun,
    test_store: Annotated[
        Path, typer.Option("--test-store", help="Labeled test store to measure on.")
    ],
    store: Annotated[
        Path | None,
        typer.Option(
            "--store",
            help="Labeled store to train the shallow classifier on (default: half the test "
            "store's media).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the shallow classifier.")] = 0,
    max_train_windows: MaxTrainWindows = 20000,
) -> None:
    """Measure the run's audio embedding: QbE retrieval mAP and shallow classifier mAP."""
    from coincide.run_folder import EVAL_DIR, METRICS_TABLE
    from coincide.stages.evaluate import EvaluateSettings
    from coincide.stages.evaluate import run as run_evaluate

    run_evaluate(EvaluateSettings(run, test_store, store, seed, max_train_windows))
    typer.echo((run / EVAL_DIR / METRICS_TABLE).read_text(encoding="utf-8"))


@app.command()
def report(
    run: TrainedRun,
    test_store: Annotated[
        Path | None,
        typer.Option("--test-store", help="Labeled test store whose embeddings to map in 2-D."),
    ] = None,
    table3: Annotated[
        Path | None,
        typer.Option("--table3", help="Folder of `coincide reproduce table3` (its --out)."),
    ] = None,
    html: Annotated[
        Path | None,
        typer.Option("--html", help="FILE.html (default RUN/report.html); PNGs in FILE_files/."),
    ] = None,
    projection: Annotated[
        Projection,
        typer.Option(
            "--map", help="Embedding map: pca (a second) or tsne (about a minute for 3000 windows)."
        ),
    ] = "pca",
    map_windows: Annotated[
        int, typer.Option("--map-windows", min=3, help="Windows on the map (seeded sample).")
    ] = 3000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sample and the map.")] = 0,
) -> None:
    """Write an HTML page: loss curves, cluster sizes, embedding map and Table 3 of a run."""
    from coincide.report.page import ReportSettings
    from coincide.report.page import run as run_report

    run_report(ReportSettings(run, test_store, table3, html, projection, map_windows, seed))


from coincide.cli import models as cli_models  # noqa: E402
from coincide.cli.reproduce import reproduce_app  # noqa: E402

app.add_typer(reproduce_app, name="reproduce")
for command in (cli_models.predict, cli_models.embed, cli_models.search, cli_models.export):
    app.command()(command)


# A full disk, a full quota, or a file over the size limit (RLIMIT_FSIZE: Python ignores SIGXFSZ).
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


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
    except PermissionError as err:
        where = f" on {err.filename}" if err.filename else ""
        typer.secho(
            f"error: permission denied{where}; choose a folder you can write to, or fix its "
            "permissions.",
            fg=typer.colors.RED,
            err=True,
        )
        sys.exit(2)
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        where = f" writing {err.filename}" if err.filename else ""
        typer.secho(
            f"error: out of disk space{where} ({os.strerror(err.errno)}); what was finished is "
            "kept and partial files were removed: free some space and run the same command "
            "again.",
            fg=typer.colors.RED,
            err=True,
        )
        sys.exit(2)


if __name__ == "__main__":
    main()
