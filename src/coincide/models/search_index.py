"""`coincide search`: find the windows of a store that sound like an example (query by example).

The store's windows are embedded with the model's f once, and a nearest-neighbour index over the
length-normalised embeddings is built and kept in `HOME/search/<store name>/` (HOME is the run
folder, or the exported model's folder):
    embeddings.npy   (n, d) float32 f(x) of every window, in store order (memory-mapped)
    index.faiss      the faiss index over the unit-length embeddings
    index.json       what they were made from (model file, store windows and chunks, index kind)
They are rebuilt when the model file or the store changed (windows were added).

Distances are cosine distances, 1 - cos(f(q), f(x)), the geometry of the paper's QbE evaluation
and of p_clust. The index is faiss (Meta's library for dense-vector search, maintained for years
and used at billion scale): inner product over unit vectors is cosine similarity.
- Up to `EXACT_MAX_WINDOWS` windows, an exact flat index: a query scans n x d floats (about a
  millisecond for 50k windows), and nothing is approximate.
- Above, an inverted-file index (IVF-Flat): k-means puts the vectors into sqrt(n) lists, trained
  on a seeded sample, and a query scans only the `nprobe` lists nearest to it. Building costs one
  k-means on a sample and one pass to assign the vectors, far less than a graph index (HNSW)
  on a laptop CPU, and the vectors are stored exactly, so the distances shown are exact.
  `benchmarks/predict.py` measures its recall@10 and speed against a brute-force search.

The query is a store window (`--query-window i`), one second of a media file (`MEDIA@SECONDS`:
the window starting at the whole second at or before SECONDS), or a whole media file (`MEDIA`:
the mean of its unit-length window embeddings). The query's own window (the store window, or the
store's window of MEDIA@SECONDS) is never a hit: it would always be the first, at distance 0;
`--exclude-same-media` also leaves out every window of the query's media. The query is checked
and embedded before the index is built. `--html OUT.html` writes a page with a player per hit
(`coincide.stages.search`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from coincide.console import printable
from coincide.errors import MediaError, UserError
from coincide.files import atomic_path, write_json_atomic
from coincide.models.inference import SoundModel
from coincide.run_folder import SEARCH_DIR
from coincide.store.features import FeatureStore

EMBEDDINGS_FILE = "embeddings.npy"
INDEX_FILE = "index.faiss"
META_FILE = "index.json"
# Below this many windows an exact search is about as fast as an approximate one.
EXACT_MAX_WINDOWS = 50_000
# Training points per IVF list: faiss asks for at least 39; more gives steadier centroids.
TRAIN_POINTS_PER_LIST = 64
KMEANS_ITERATIONS = 20
# Fraction of the lists a query scans by default (at least MIN_NPROBE lists).
NPROBE_FRACTION = 1 / 16
MIN_NPROBE = 16
ADD_BLOCK = 65536
EXCERPT_CONTEXT_S = 1.0
WINDOW_S = 0.96


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """`(n, d)` -> float32 rows of length 1 (a zero row stays zero)."""
    rows = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


def ivf_lists(n: int) -> int:
    """Number of IVF lists for n vectors: sqrt(n), so lists and list lengths balance."""
    return max(1, round(math.sqrt(n)))


def default_nprobe(nlist: int) -> int:
    """Lists a query scans by default: a sixteenth of them, at least MIN_NPROBE."""
    return min(nlist, max(MIN_NPROBE, round(nlist * NPROBE_FRACTION)))


def build_index(embeddings: np.ndarray, exact_max: int = EXACT_MAX_WINDOWS, seed: int = 0) -> Any:
    """A faiss inner-product index over the unit-length rows of `embeddings` `(n, d)`.

    Rows are read in blocks, so `embeddings` may be a memory map larger than RAM (the index
    itself holds n x d float32). Up to `exact_max` rows: IndexFlatIP (exact); above: IndexIVFFlat
    with `ivf_lists(n)` lists trained on a seeded sample.
    """
    import faiss

    n, dim = embeddings.shape
    if n > exact_max:
        nlist = ivf_lists(n)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = KMEANS_ITERATIONS
        index.cp.seed = seed
        sample_size = min(n, TRAIN_POINTS_PER_LIST * nlist)
        sample = np.sort(np.random.default_rng(seed).choice(n, sample_size, replace=False))
        index.train(unit_rows(embeddings[sample]))
        index.nprobe = default_nprobe(nlist)
    else:
        index = faiss.IndexFlatIP(dim)
    for start in range(0, n, ADD_BLOCK):
        index.add(unit_rows(embeddings[start : start + ADD_BLOCK]))
    return index


def search_index(
    index: Any, queries: np.ndarray, k: int, nprobe: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest rows of each query: (cosine distances `(q, k)`, row ids `(q, k)` int64).

    Missing neighbours (fewer than k rows reached) have id -1 and distance inf.
    """
    import faiss

    if nprobe is not None and isinstance(index, faiss.IndexIVF):
        index.nprobe = nprobe
    similarity, ids = index.search(unit_rows(np.atleast_2d(queries)), k)
    distance = np.where(ids >= 0, 1.0 - similarity, np.inf)
    return distance.astype(np.float64), ids.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# The store's index, built once per model and store


@dataclass
class StoreIndex:
    """A store's window embeddings `(n, d)` (memory-mapped) and the faiss index over them."""

    folder: Path
    embeddings: np.ndarray
    index: Any
    built: bool  # True when this call built it, False when it was read from disk


def store_identity(store: FeatureStore) -> dict[str, Any]:
    """What identifies a store's content for the index: its folder, windows and chunks."""
    return {
        "store": str(store.root.resolve()),
        "windows": len(store),
        "chunks": [int(c) for c in store.chunk_ids()],
    }


def index_folder(model: SoundModel, store: FeatureStore) -> Path:
    """`HOME/search/<store name>/` for the model's home folder."""
    if model.home is None:
        raise UserError("this model was built in memory; load it from a run folder to search.")
    return model.home / SEARCH_DIR / store.root.resolve().name


def ensure_index(
    model: SoundModel,
    store: FeatureStore,
    batch_size: int = 512,
    console: Console | None = None,
) -> StoreIndex:
    """The store's index for this model: read from disk when it was made from the same model
    file and store content, otherwise (re)built and saved first."""
    import faiss

    from coincide.models.embed_store import cached_embeddings

    folder = index_folder(model, store)
    identity = {"model": model.identity, **store_identity(store)}
    meta_path = folder / META_FILE
    cached = folder / EMBEDDINGS_FILE
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("identity") == identity:
            embeddings, _ = cached_embeddings(cached, identity, lambda: model.encoder, store)
            return StoreIndex(folder, embeddings, faiss.read_index(str(folder / INDEX_FILE)), False)
    if len(store) == 0:
        raise UserError(f"store {printable(store.root)} has no windows; ingest media first.")
    if console is not None:
        console.print(f"indexing the {len(store)} windows of {printable(store.root)} ...")
    meta_path.unlink(missing_ok=True)  # the files below change: they match no identity now
    embeddings, _ = cached_embeddings(
        cached, identity, lambda: model.encoder, store, batch_size, model.device
    )
    index = build_index(embeddings)
    with atomic_path(folder / INDEX_FILE) as tmp:
        faiss.write_index(index, str(tmp))
    kind = "ivf-flat" if isinstance(index, faiss.IndexIVF) else "flat"
    meta = {"identity": identity, "index": kind, "ntotal": int(index.ntotal)}
    if isinstance(index, faiss.IndexIVF):
        meta.update(nlist=int(index.nlist), nprobe=int(index.nprobe))
    write_json_atomic(meta_path, meta)
    return StoreIndex(folder, embeddings, index, True)


# ---------------------------------------------------------------------------------------------
# Queries


@dataclass(frozen=True)
class Query:
    """A media file with an optional time (seconds), or a store window."""

    media: Path | None = None
    seconds: float | None = None
    window: int | None = None

    def describe(self) -> str:
        if self.window is not None:
            return f"store window {self.window}"
        assert self.media is not None
        at = f" at {self.seconds:g} s" if self.seconds is not None else ""
        return f"{printable(self.media)}{at}"


def parse_query(text: str | None, window: int | None) -> Query:
    """`MEDIA`, `MEDIA@SECONDS` or a store window number -> Query (UserError when ambiguous)."""
    if (text is None) == (window is None):
        raise UserError("give the query as either --query MEDIA[@SECONDS] or --query-window I.")
    if window is not None:
        return Query(window=window)
    assert text is not None
    # A name that exists is a file even if it holds "@"; otherwise split at the last "@".
    if not os.path.lexists(text) and "@" in text:
        name, _, seconds_text = text.rpartition("@")
        try:
            seconds = float(seconds_text)
        except ValueError:
            raise UserError(
                f"--query {text}: '{seconds_text}' is not a number of seconds; "
                "write MEDIA@SECONDS, e.g. dog.wav@12.5."
            ) from None
        if not math.isfinite(seconds) or seconds < 0:
            raise UserError(f"--query {text}: the time must be a number of seconds >= 0.")
        return Query(media=Path(name), seconds=seconds)
    return Query(media=Path(text))


def check_frontend(store: FeatureStore) -> None:
    """UserError when the store's windows were made by other frontend settings than the ones
    a media query is decoded with now (its distances would compare unlike features)."""
    from coincide.media.frontend import frontend_parameters

    # A setting the store does not record counts as different: it predates that setting. The
    # frame size concerns pictures only.
    current = {k: v for k, v in frontend_parameters().items() if k != "frame_size"}
    different = sorted(k for k, v in current.items() if store.frontend.get(k, ...) != v)
    if different:
        raise UserError(
            f"store {printable(store.root)} was ingested with other frontend settings "
            f"({', '.join(different)}) than this coincide decodes the query with; ingest the "
            "media into a new store, or query with --query-window."
        )


def media_vector(model: SoundModel, query: Query) -> np.ndarray:
    """The embedding `(d,)` float32 of a media query: its window at `seconds`, or the mean of
    its unit-length window embeddings (UserError for a missing file or a time past its end)."""
    from coincide.media.decode import iter_features

    assert query.media is not None
    if not query.media.is_file():
        raise UserError(f"query media {printable(query.media)} does not exist; give a media file.")
    wanted = None if query.seconds is None else int(math.floor(query.seconds))
    total = np.zeros(model.embed_dim, dtype=np.float64)
    windows = 0
    try:
        for block in iter_features(query.media):
            if wanted is not None and wanted < windows + len(block):
                row = block.logmel[wanted - windows : wanted - windows + 1]
                return model.embed_logmel(row)[0]
            if wanted is None:
                total += unit_rows(model.embed_logmel(block.logmel)).sum(axis=0)
            windows += len(block)
    except MediaError as err:
        raise UserError(f"cannot read the query {printable(query.media)}: {err}.") from err
    if wanted is not None:
        raise UserError(
            f"--query {query.describe()}: the file has {windows} one-second windows "
            f"(0..{windows - 1} s); give an earlier time."
        )
    return (total / windows).astype(np.float32)


def media_rows(store: FeatureStore, media: str | Path) -> np.ndarray:
    """Store windows `(m,)` of one media file (the same file under any spelling of its path)."""
    paths = store.index["media_path"]
    target = os.path.realpath(media)
    same = [p for p in paths.unique() if p == str(media) or os.path.realpath(p) == target]
    return np.flatnonzero(paths.isin(same).to_numpy())


def left_out_windows(store: FeatureStore, query: Query, same_media: bool) -> set[int]:
    """Store windows never reported as hits: the query's own window (a store window, or the
    store's window of MEDIA@SECONDS), and with `same_media` every window of the query's media."""
    if query.window is not None:
        media: str | Path = str(store.index["media_path"].iat[query.window])
        own = {query.window}
    else:
        assert query.media is not None
        media, own = query.media, set()
        if query.seconds is not None:
            rows = media_rows(store, media)
            second = math.floor(query.seconds)
            times = store.index["time_s"].to_numpy()[rows]
            own = {int(r) for r in rows[np.floor(times) == second]}
    if same_media:
        return own | {int(r) for r in media_rows(store, media)}
    return own


@dataclass(frozen=True)
class Hit:
    """One result: a store window, its media and start time, its cosine distance to the query."""

    rank: int
    window: int
    media_path: str
    time_s: float
    distance: float
    labels: tuple[str, ...]


def find_similar(
    store: FeatureStore,
    store_index: StoreIndex,
    vector: np.ndarray,
    k: int,
    left_out: Collection[int] = (),
    nprobe: int | None = None,
) -> list[Hit]:
    """The k windows nearest to `vector`, nearest first, none of them in `left_out` (the index
    is asked for k + len(left_out), so that k remain when every left-out window is near)."""
    wanted = min(k + len(left_out), int(store_index.index.ntotal))
    distances, ids = search_index(store_index.index, vector[None], wanted, nprobe)
    found = [
        (int(i), float(d))
        for i, d in zip(ids[0], distances[0], strict=True)
        if i >= 0 and int(i) not in left_out
    ]
    index = store.index
    return [
        Hit(
            rank=rank,
            window=i,
            media_path=str(index["media_path"].iat[i]),
            time_s=float(index["time_s"].iat[i]),
            distance=max(d, 0.0),
            labels=tuple(index["labels"].iat[i]),
        )
        for rank, (i, d) in enumerate(found[:k], start=1)
    ]


# ---------------------------------------------------------------------------------------------
# Excerpts for the page's players


def read_excerpt(path: Path, start_s: float, seconds: float) -> np.ndarray:
    """`seconds` of a media file's audio from `start_s` (on the store's clock: seconds from the
    first audio sample) as 16 kHz mono float32, seeking instead of decoding from the start.

    Raises MediaError when the file cannot be read.
    """
    import av

    from coincide.media.frontend import SAMPLE_RATE

    if not Path(path).is_file():
        raise MediaError("file not found")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as err:
        raise MediaError(f"cannot open: {err}") from err
    with container:
        stream = container.streams.best("audio")
        if stream is None:
            raise MediaError("no audio stream")
        time_base = stream.time_base
        origin = float(stream.start_time * time_base) if stream.start_time and time_base else 0.0
        start_s = max(0.0, start_s)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        pieces: list[np.ndarray] = []
        begin_s: float | None = None  # store time of the first sample in `pieces`
        have = 0
        try:
            if start_s > 0 and time_base:
                container.seek(round((origin + start_s) / time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                if begin_s is None:
                    begin_s = (float(frame.time) if frame.time is not None else origin) - origin
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray().reshape(-1))
                    have += len(pieces[-1])
                if begin_s + have / SAMPLE_RATE >= start_s + seconds:
                    break
        except av.error.FFmpegError as err:
            raise MediaError(f"audio does not decode ({err})") from err
    if not pieces or begin_s is None:
        raise MediaError("no audio at that time")
    samples = np.concatenate(pieces)
    first = max(0, round((start_s - begin_s) * SAMPLE_RATE))
    return samples[first : first + round(seconds * SAMPLE_RATE)]


# ---------------------------------------------------------------------------------------------
# The command


def search(
    model: SoundModel,
    store: FeatureStore,
    query: Query,
    k: int = 10,
    nprobe: int | None = None,
    console: Console | None = None,
    exclude_same_media: bool = False,
) -> list[Hit]:
    """The k store windows nearest to the query (building the store's index when needed),
    leaving out the query's own window, and with `exclude_same_media` its media's windows.

    The query is checked (and a media query decoded and embedded) before the index is built, so
    a typo or a time past the end of the file fails in seconds, not after indexing a store."""
    if k < 1:
        raise UserError(f"--top must be at least 1, not {k}.")
    vector = None
    if query.window is not None:
        if not 0 <= query.window < len(store):
            raise UserError(
                f"--query-window {query.window} is not in 0..{len(store) - 1}; pick a window."
            )
    else:
        check_frontend(store)
        vector = media_vector(model, query)
    left_out = left_out_windows(store, query, exclude_same_media)
    store_index = ensure_index(model, store, console=console)
    if vector is None:
        vector = np.asarray(store_index.embeddings[query.window], dtype=np.float32)
    return find_similar(store, store_index, vector, k, left_out, nprobe)
