"""`coincide embed`: the embedding f(x) of every second of new media, as a Parquet table.

One row per 0.96 s window: `media_path` (string), `time_s` (float64, the window's start) and
`embedding` (fixed-size list of d float32). The schema's metadata names the model and d. Media
are read block by block (`iter_features`), so a long file needs the memory of one block plus its
(n_windows, d) embeddings; rows are written in row groups of about `ROW_GROUP_ROWS` windows, each
file's rows together, so a file that fails midway leaves no rows behind. The table appears under
its final name only when complete.

Read it back with `pandas.read_parquet(path)` (the embedding column holds arrays) or
`np.stack(table.column("embedding").to_numpy(zero_copy_only=False))` with pyarrow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from coincide.config.stage import StageSettings
from coincide.console import printable, say
from coincide.errors import MediaError, UserError
from coincide.files import atomic_path
from coincide.models.inference import BLOCK_WINDOWS, SoundModel, load_model

ROW_GROUP_ROWS = 65536


def embedding_schema(model: SoundModel) -> pa.Schema:
    """media_path string, time_s float64, embedding fixed_size_list<float32>[d]; metadata
    `coincide` = {"model": identity, "embed_dim": d}."""
    metadata = {"model": model.identity, "embed_dim": model.embed_dim}
    return pa.schema(
        [
            pa.field("media_path", pa.string()),
            pa.field("time_s", pa.float64()),
            pa.field("embedding", pa.list_(pa.float32(), model.embed_dim)),
        ],
        metadata={"coincide": json.dumps(metadata)},
    )


def embed_file(
    model: SoundModel, path: Path, block_windows: int = BLOCK_WINDOWS
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of every window of a media file: (time_s `(n,)`, embeddings `(n, d)`).

    Raises MediaError when the file cannot be read.
    """
    from coincide.media.decode import iter_features

    times, embeddings = [], []
    for block in iter_features(Path(path), block_windows=block_windows):
        times.append(block.time_s)
        embeddings.append(model.embed_logmel(block.logmel))
    return np.concatenate(times), np.concatenate(embeddings)


def _table(schema: pa.Schema, parts: list[tuple[str, np.ndarray, np.ndarray]]) -> pa.Table:
    paths = [path for path, times, _ in parts for _ in range(len(times))]
    times = np.concatenate([t for _, t, _ in parts])
    flat = np.concatenate([e for _, _, e in parts]).astype(np.float32, copy=False).reshape(-1)
    dim = schema.field("embedding").type.list_size
    embeddings = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)
    return pa.Table.from_arrays(
        [pa.array(paths, pa.string()), pa.array(times), embeddings], schema=schema
    )


@dataclass(frozen=True)
class EmbedSettings(StageSettings):
    """`coincide embed`: the model (run, fine-tuning or export folder, or checkpoint), the media
    files and folders, the Parquet table to write and the device (None: auto). Kept in the
    table's schema metadata (`coincide_settings`)."""

    command: ClassVar[str] = "embed"
    model: Path
    paths: tuple[Path, ...]
    out: Path
    device: str | None = None


def run(settings: EmbedSettings, console: Console | None = None) -> int:
    """Embed media files and folders into a Parquet table at `out`; returns 0.

    Raises UserError for a bad output name, no media found, or when every file was skipped (then
    no table is written).
    """
    paths, out = settings.paths, Path(settings.out)

    from coincide.console import FilesProgress
    from coincide.stages.ingest import find_media

    console = console or Console(stderr=True)
    if out.suffix.lower() != ".parquet":
        raise UserError(f"--parquet {printable(out)} must end in .parquet; rename it.")
    model = load_model(settings.model, settings.device)
    files = find_media(paths)
    if not files:
        shown = " ".join(printable(p) for p in paths)
        raise UserError(f"no media files under {shown}; give media files or folders.")

    schema = embedding_schema(model)
    schema = schema.with_metadata(
        {**schema.metadata, b"coincide_settings": json.dumps(settings.record()).encode()}
    )
    pending: list[tuple[str, np.ndarray, np.ndarray]] = []
    pending_rows = skipped = 0
    progress = FilesProgress("embed", files, console)
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema) as writer, progress:
        for path in files:
            try:
                times, embeddings = embed_file(model, path)
            except MediaError as err:
                skipped += 1
                say(progress.console, f"skipped {printable(path)}: {err}")
                progress.file_done(path, 0)
                continue
            pending.append((printable(path), times, embeddings))
            pending_rows += len(times)
            if pending_rows >= ROW_GROUP_ROWS:
                writer.write_table(_table(schema, pending))
                pending, pending_rows = [], 0
            progress.file_done(path, len(times))
        if skipped == len(files):
            raise UserError(
                f"none of the {len(files)} media files could be read; the reasons are "
                "printed above."
            )
        if pending:
            writer.write_table(_table(schema, pending))
    say(
        console,
        f"{len(files)} files: {len(files) - skipped} embedded ({progress.windows} windows), "
        f"{skipped} skipped; wrote {printable(out)}",
    )
    return 0
