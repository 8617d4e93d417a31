"""Speed of `coincide predict`, and of `coincide search`'s index against brute force.

    .venv/bin/python benchmarks/predict.py [--minutes 10] [--config small] [--device cpu]
                                           [--n 1000000] [--queries 100] [--skip-predict]
                                           [--skip-search]

1. Predict: a generated WAV of `--minutes` minutes is scored end to end by `predict_file`
   (decoding, resampling, log-mel frontend, f, p_class) with a model of the `--config` preset's
   audio architecture (random weights: speed does not depend on them) and a 10-class head.
   The reference measured in the same run is the features alone (`iter_features`: decoding and
   frontend), so the table shows what the network adds. On CPU, one thread, in CPU seconds
   (time.process_time), so the numbers are per core and hold on a busy machine; on CUDA, wall
   seconds. Real-time factor (RTF) = processing seconds / audio seconds.
2. Search: `--n` random 128-d vectors, isotropic ("uniform", the hardest case for any index: no
   structure) and a mixture of 1000 overlapping Gaussian clusters ("clustered", closer to
   embeddings of sounds). The index is the one `coincide search` builds (`build_index`: faiss
   IVF-Flat, sqrt(n) lists), timed against brute-force NumPy (unit vectors, one matrix-vector
   product and a partial sort per query), both on one thread, one query at a time (latency,
   CPU ms per query). Recall@10: the share of the exact 10 nearest neighbours (brute force)
   that the index returns, over `--queries` held-out queries.

The bars (issue 7): the small model predicts at least `MIN_REALTIME_SMALL_CPU` x real time per
CPU core, and on clustered vectors the index at its default nprobe has recall@10 >= `MIN_RECALL`
at least `MIN_SPEEDUP` x faster than brute force. Exits 1 when below a bar that was measured.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from threadpoolctl import threadpool_limits

from coincide.config.settings import load_config
from coincide.dist import resolve_device
from coincide.media.decode import iter_features
from coincide.models import ClassifierHead, build_encoder
from coincide.models.inference import BLOCK_WINDOWS, SoundModel
from coincide.models.search_index import build_index, default_nprobe, search_index, unit_rows
from coincide.stages.predict import predict_file

MIN_REALTIME_SMALL_CPU = 50.0
MIN_RECALL = 0.9
MIN_SPEEDUP = 5.0
NUM_CLASSES = 10
DIM = 128
CLUSTERS = 1000
ROUNDS = 3  # timed rounds of each side of the predict benchmark
# Standard deviation of the points around their centre, per dimension, relative to the centres'
# own (1): at 1.5 the clusters overlap (a point is about as far from its own centre as the
# centres are from each other), at 1.0 an index finds everything, at 3.0 the data is nearly
# uniform.
CLUSTER_SPREAD = 1.5


# ---------------------------------------------------------------------------------------------
# Predict


def write_audio(path: Path, minutes: float, rate: int = 44100) -> Path:
    """16-bit stereo WAV at 44.1 kHz (so resampling and downmixing are measured too): tones
    that change every second over noise, written minute by minute."""
    rng = np.random.default_rng(0)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(rate)
        for minute in range(int(np.ceil(minutes))):
            seconds = min(60.0, minutes * 60 - minute * 60)
            t = np.arange(round(seconds * rate)) / rate
            freq = 200 + 150 * ((np.floor(t) + minute) % 11)
            mono = 0.3 * np.sin(2 * np.pi * freq * t) + rng.normal(0, 0.05, len(t))
            stereo = np.stack([mono, mono], axis=1)
            out.writeframes(np.round(stereo * 32767).astype("<i2").tobytes())
    return path


def random_model(config: str, device: torch.device) -> SoundModel:
    """f of the preset's audio architecture with a 10-class head, random weights, eval mode."""
    cfg = load_config([config])
    torch.manual_seed(0)
    encoder = build_encoder(cfg.model.audio)
    head = ClassifierHead(cfg.model.audio.embed_dim, NUM_CLASSES)
    return SoundModel(encoder, head, [f"class{i}" for i in range(NUM_CLASSES)], device)


def measure(work: Callable[[], object], device: torch.device) -> float:
    """Seconds `work` takes: CPU seconds on CPU (per core), wall seconds on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        started = time.perf_counter()
        work()
        torch.cuda.synchronize()
        return time.perf_counter() - started
    started = time.process_time()
    work()
    return time.process_time() - started


def features_only(path: Path) -> int:
    """The reference: decoding and the frontend in the blocks `predict_file` reads."""
    return sum(len(block) for block in iter_features(path, block_windows=BLOCK_WINDOWS))


def bench_predict(args: argparse.Namespace, console: Console) -> list[str]:
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    model = random_model(args.config, device)
    with tempfile.TemporaryDirectory(prefix="coincide-bench-") as tmp:
        audio = write_audio(Path(tmp) / "audio.wav", args.minutes)
        warmup = write_audio(Path(tmp) / "warmup.wav", 0.25)
        predict_file(model, warmup)  # imports, filter bank, kernels: outside the clocks
        audio_s = args.minutes * 60
        # The fastest of ROUNDS alternating rounds: CPU time only grows with interference.
        features_s = predict_s = float("inf")
        for _ in range(ROUNDS):
            features_s = min(features_s, measure(lambda: features_only(audio), device))
            predict_s = min(predict_s, measure(lambda: predict_file(model, audio), device))

    clock = "CPU s (1 thread)" if device.type == "cpu" else "wall s"
    table = Table(title=f"predict: {args.minutes:g} min of 44.1 kHz stereo WAV, {device}")
    table.add_column("")
    table.add_column(clock, justify="right")
    table.add_column("RTF", justify="right")
    table.add_column("x real time", justify="right")
    for name, seconds in (
        ("features only (decode + log-mel)", features_s),
        (f"predict, {args.config} model ({model.encoder.config.arch})", predict_s),
    ):
        rtf = seconds / audio_s
        table.add_row(name, f"{seconds:.2f}", f"{rtf:.5f}", f"{1 / rtf:.0f}")
    console.print(table)
    console.print(f"predict takes {predict_s / features_s:.2f}x the time of the features alone")
    realtime = audio_s / predict_s
    if args.config == "small" and device.type == "cpu" and realtime < MIN_REALTIME_SMALL_CPU:
        return [f"small model predicts at {realtime:.0f}x real time per core"]
    return []


# ---------------------------------------------------------------------------------------------
# Search


def vectors(kind: str, n: int, seed: int) -> np.ndarray:
    """`(n, 128)` float32: isotropic Gaussian, or a mixture of CLUSTERS Gaussians of spread
    CLUSTER_SPREAD around centres drawn from a standard Gaussian."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.standard_normal((n, DIM), dtype=np.float32)
    centres = np.random.default_rng(1234).standard_normal((CLUSTERS, DIM), dtype=np.float32)
    out = CLUSTER_SPREAD * rng.standard_normal((n, DIM), dtype=np.float32)
    out += centres[rng.integers(CLUSTERS, size=n)]
    return out


def brute_force(unit: np.ndarray, query: np.ndarray, k: int = 10) -> np.ndarray:
    """Ids of the k largest cosine similarities (one query), nearest first."""
    similarity = unit @ query
    top = np.argpartition(-similarity, k)[:k]
    return top[np.argsort(-similarity[top])]


def bench_search(args: argparse.Namespace, console: Console) -> list[str]:
    import faiss

    faiss.omp_set_num_threads(1)
    table = Table(title=f"search: {args.n:,} random {DIM}-d vectors, {args.queries} queries")
    for column in ("data", "method", "build s", "CPU ms/query", "speed-up", "recall@10"):
        table.add_column(column, justify="left" if column in ("data", "method") else "right")
    failures = []
    for kind in ("uniform", "clustered"):
        data = vectors(kind, args.n, seed=0)
        queries = unit_rows(vectors(kind, args.queries, seed=1))
        with threadpool_limits(1):
            started = time.perf_counter()
            index = build_index(data)
            build_s = time.perf_counter() - started
            unit = unit_rows(data)
            del data
            started = time.process_time()
            exact = [brute_force(unit, q) for q in queries]
            brute_ms = (time.process_time() - started) * 1000 / len(queries)
            table.add_row(kind, "NumPy brute force", "", f"{brute_ms:.2f}", "1.0", "1.000")
            default = default_nprobe(index.nlist)
            for row, nprobe in enumerate(sorted({8, 32, default, 128})):
                started = time.process_time()
                found = [search_index(index, q, 10, nprobe)[1][0] for q in queries]
                ms = (time.process_time() - started) * 1000 / len(queries)
                hits = [len(set(f) & set(e)) for f, e in zip(found, exact, strict=True)]
                recall = np.mean(hits) / 10
                name = f"IVF nprobe {nprobe}" + (" (default)" if nprobe == default else "")
                build = f"{build_s:.1f}" if row == 0 else ""
                speedup = brute_ms / ms
                table.add_row(kind, name, build, f"{ms:.2f}", f"{speedup:.1f}", f"{recall:.3f}")
                if kind == "clustered" and nprobe == default:
                    if recall < MIN_RECALL:
                        failures.append(f"recall@10 {recall:.3f} on clustered vectors")
                    if speedup < MIN_SPEEDUP:
                        failures.append(f"speed-up {speedup:.1f}x on clustered vectors")
        del unit
        console.print(f"{kind}: faiss IVF-Flat with {index.nlist} lists, built in {build_s:.1f} s")
        del index
    console.print(table)
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="Audio to predict.")
    parser.add_argument("--config", default="small", help="Preset of the model (small, paper).")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto.")
    parser.add_argument("--n", type=int, default=1_000_000, help="Vectors to search.")
    parser.add_argument("--queries", type=int, default=100, help="Search queries.")
    parser.add_argument("--skip-predict", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    args = parser.parse_args(argv)
    console = Console()
    failures = []
    if not args.skip_predict:
        failures += bench_predict(args, console)
    if not args.skip_search:
        failures += bench_search(args, console)
    if failures:
        console.print("BELOW THE BAR: " + "; ".join(failures))
        return 1
    console.print("ok: every bar measured was met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
