"""Ingestion speed against bare PyAV decoding of the same files, measured in the same run.

    .venv/bin/python benchmarks/ingest.py [FOLDER] [--repeat N]

FOLDER is a benchmark folder of media files (default: the demo benchmark, composed into a
temporary folder with `coincide make-bench --preset demo`). Both sides run in this process on
one core's worth of work: ingestion with `--workers 1`, so that no child process does any of
its work, and both are measured in CPU seconds of this process (time.process_time, which counts
every thread, the decoders' included). The numbers are per core and do not depend on how many
cores the machine has:

- bare decoding: every audio and video frame of every file decoded by PyAV, nothing else;
- ingestion: `coincide ingest` into a new store (hashing, decoding, resampling, log-mel, frame
  sampling and resizing, writing chunks).

One-time costs are paid before the clocks start, on both sides alike: every file is decoded
once (file cache, decoder code) and one file is ingested into a scratch store (imports of the
decoder, torch, the parquet writer and the progress bar; the mel filter bank). The figures are
then the steady-state throughput a long ingestion run has. Each side's time is the fastest of
`--repeat` rounds, which alternate which side goes first; CPU time only grows with interference
(cache, memory bandwidth) from whatever else runs on the machine.

`--camera-like N` measures a second set the same way: N clips made from the benchmark's own
pictures and sound but shaped like a camera's video (640 x 360 at 30 fps, H.264 with B-frames,
48 kHz stereo AAC). The demo clips are 128 x 128 at 4 fps, so cheap to decode that the fixed
cost of the features per second weighs far more than it does on ordinary video; camera-like
clips show the other end, where ingestion also saves decoding work (non-reference frames that no
window uses are skipped, see `coincide.media.decode`). `--decode-every-frame` and
`--default-decoder-threads` turn off the skipping and the one-thread decoding, to measure each.

The bars (issue 2): ingestion at least 0.6 x the speed of bare decoding (checked on every set
measured), and at least 200 x real time per core on the benchmark clips. Exits 1 when any is
missed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from rich.console import Console
from rich.table import Table

import coincide
import coincide.media.decode
from coincide.media.decode import decode_audio
from coincide.stages.ingest import IngestSettings, find_media
from coincide.stages.ingest import run as ingest

MIN_RATIO_TO_DECODE = 0.6
MIN_REALTIME_PER_CORE = 200.0


def decode_only(path: Path) -> None:
    """Decode every audio and video frame of a file (the decoder's own work, no features)."""
    with av.open(str(path)) as container:
        streams = [*container.streams.audio[:1], *container.streams.video[:1]]
        for _frame in container.decode(*streams):
            pass


def demo_benchmark(out: Path) -> Path:
    """Compose the demo benchmark with the `coincide make-bench` command; returns its train set."""
    command = [
        sys.executable,
        "-m",
        "coincide.cli",
        "make-bench",
        "--out",
        str(out),
        "--preset",
        "demo",
    ]
    print(f"composing the demo benchmark: {' '.join(command)}", flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return out / "train"


def camera_like(sources: list[Path], out: Path, n: int, seconds: int = 10) -> Path:
    """`n` clips shaped like a camera's video, made from the benchmark clips' own pictures and
    sound: 640 x 360 at 30 fps, H.264 with B-frames (libx264 veryfast: 3 B-frames, pyramid),
    48 kHz stereo AAC. The picture (the clip's frames scaled to the height) pans slowly over a
    grey field with light sensor noise, so that frames predict each other as in real footage."""
    out.mkdir(parents=True, exist_ok=True)
    width, height, fps, rate = 640, 360, 30, 48000
    rng = np.random.default_rng(0)
    print(f"composing {n} camera-like clips ({width} x {height}, {fps} fps, H.264 + AAC)")
    for k, source in enumerate(sources[:n]):
        with av.open(str(source)) as container:
            pictures = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        sound = decode_audio(source)  # 16 kHz mono
        with av.open(str(out / f"camera_{k:03d}.mp4"), "w") as container:
            video = container.add_stream("libx264", rate=fps)
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            video.codec_context.thread_count = 1
            video.options = {"preset": "veryfast", "crf": "23"}
            audio = container.add_stream("aac", rate=rate)
            audio.layout = "stereo"
            for i in range(seconds * fps):
                picture = pictures[min(len(pictures) - 1, i * len(pictures) // (seconds * fps))]
                zoom = -(-height // picture.shape[0])  # fill the height (3x for 128 px)
                big = np.kron(picture, np.ones((zoom, zoom, 1), np.uint8))[:height, : width - 180]
                canvas = np.full((height, width, 3), 90, np.int16)
                x = 100 + int(80 * np.sin(i / 40))
                canvas[:, x : x + big.shape[1]] = big
                canvas += rng.integers(-4, 5, canvas.shape, dtype=np.int16)
                frame = av.VideoFrame.from_ndarray(canvas.clip(0, 255).astype(np.uint8), "rgb24")
                frame.pts = i
                container.mux(video.encode(frame))
            container.mux(video.encode(None))
            t = np.arange(len(sound) * 3) / 3.0
            upsampled = np.interp(t, np.arange(len(sound)), sound).astype(np.float32)
            stereo = np.stack([upsampled, 0.8 * upsampled])
            samples = av.AudioFrame.from_ndarray(stereo, format="fltp", layout="stereo")
            samples.sample_rate, samples.pts = rate, 0
            container.mux(audio.encode(samples))
            container.mux(audio.encode(None))
    return out


def measure(folder: Path, files: list[Path], rounds: int, tmp: Path) -> dict[str, float]:
    """CPU seconds of bare decoding and of ingestion (fastest of `rounds` alternating rounds),
    with the stored media's duration and counts."""
    # Warm-up outside the clocks (see the module docstring).
    for path in files:
        decode_only(path)
    ingest(
        IngestSettings(tuple(files[:1]), tmp / "warm-up", workers=1), console=Console(quiet=True)
    )
    shutil.rmtree(tmp / "warm-up")

    def decode_round() -> float:
        started = time.process_time()
        for path in files:
            decode_only(path)
        return time.process_time() - started

    def ingest_round(store_path: Path) -> float:
        started = time.process_time()
        ingest(IngestSettings((folder,), store_path, workers=1), console=Console(quiet=True))
        return time.process_time() - started

    decode_cpu = ingest_cpu = float("inf")
    for round_ in range(rounds):
        store_path = tmp / f"store{round_}"
        if round_ % 2 == 0:
            decode_cpu = min(decode_cpu, decode_round())
            ingest_cpu = min(ingest_cpu, ingest_round(store_path))
        else:
            ingest_cpu = min(ingest_cpu, ingest_round(store_path))
            decode_cpu = min(decode_cpu, decode_round())
        if round_ < rounds - 1:
            shutil.rmtree(store_path)  # outside the clocks; keeps the page cache small

    store = coincide.open_store(store_path)
    figures = {
        "decode_cpu": decode_cpu,
        "ingest_cpu": ingest_cpu,
        "media_s": float(store.media["duration_s"].sum()),
        "media": len(store.media),
        "windows": len(store),
    }
    shutil.rmtree(store_path)
    return figures


def report(name: str, folder: Path, f: dict[str, float], console: Console, realtime_bar: bool):
    """Print one set's table; returns the bars it misses."""
    hours = f["media_s"] / 3600
    decode_speed, ingest_speed = hours / f["decode_cpu"], hours / f["ingest_cpu"]
    ratio = ingest_speed / decode_speed
    realtime = f["media_s"] / f["ingest_cpu"]

    table = Table(title=f"{name}: {f['media']:.0f} files, {hours:.3f} h, {folder}")
    table.add_column("")
    table.add_column("CPU s", justify="right")
    table.add_column("media h / CPU s", justify="right")
    table.add_column("x real time / core", justify="right")
    table.add_row(
        "bare PyAV decode",
        f"{f['decode_cpu']:.2f}",
        f"{decode_speed:.4f}",
        f"{f['media_s'] / f['decode_cpu']:.0f}",
    )
    table.add_row(
        "coincide ingest", f"{f['ingest_cpu']:.2f}", f"{ingest_speed:.4f}", f"{realtime:.0f}"
    )
    console.print(table)
    console.print(f"{f['windows']:.0f} windows stored")
    realtime_note = f" (bar >= {MIN_REALTIME_PER_CORE:.0f}x)" if realtime_bar else ""
    console.print(
        f"{name}: ingest / decode speed: {ratio:.2f} (bar >= {MIN_RATIO_TO_DECODE}); "
        f"real time per core: {realtime:.0f}x{realtime_note}"
    )
    failures = []
    if ratio < MIN_RATIO_TO_DECODE:
        failures.append(f"{name}: ingestion runs at {ratio:.2f} of bare decoding speed")
    if realtime_bar and realtime < MIN_REALTIME_PER_CORE:
        failures.append(f"{name}: ingestion runs at {realtime:.0f}x real time per core")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, nargs="?", help="Benchmark media folder.")
    parser.add_argument("--repeat", type=int, default=5, help="Rounds; the fastest counts.")
    parser.add_argument(
        "--camera-like",
        type=int,
        default=0,
        metavar="N",
        help="Also measure N camera-like clips (640 x 360, 30 fps, B-frames) made from the "
        "benchmark's clips.",
    )
    parser.add_argument(
        "--decode-every-frame",
        action="store_true",
        help="Ingest with every video frame decoded (no skipping of unused non-reference "
        "frames), to measure what the skipping saves.",
    )
    parser.add_argument(
        "--default-decoder-threads",
        action="store_true",
        help="Ingest with FFmpeg's default decoder threading (a thread pool per file) instead of "
        "one thread per stream, to measure what the pools cost.",
    )
    args = parser.parse_args(argv)
    console = Console()
    if args.default_decoder_threads:
        coincide.media.decode.DECODER_THREADS = 0
    if args.decode_every_frame:
        coincide.media.decode._Demuxer.skip_unused_frames = lambda *_: None  # type: ignore[method-assign]

    with tempfile.TemporaryDirectory(prefix="coincide-bench-") as tmp_name:
        tmp = Path(tmp_name)
        folder = args.folder if args.folder is not None else demo_benchmark(tmp / "bench")
        files = find_media([folder])
        if not files:
            sys.exit(f"no media files in {folder}; give a benchmark folder of videos.")
        sets = [("benchmark clips", folder, files, True)]
        if args.camera_like > 0:
            camera = camera_like(files, tmp / "camera", args.camera_like)
            sets.append(("camera-like clips", camera, find_media([camera]), False))
        rounds = max(args.repeat, 1)
        failures = []
        for name, set_folder, set_files, realtime_bar in sets:
            figures = measure(set_folder, set_files, rounds, tmp)
            failures += report(name, set_folder, figures, console, realtime_bar)

    if failures:
        console.print("BELOW THE BAR: " + "; ".join(failures))
        return 1
    console.print("ok: every bar met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
