"""Write a clip as an ordinary mp4: H.264 video (yuv420p) and AAC audio, muxed by PyAV.

Encoding is single-threaded and carries no wall-clock metadata, so the same frames and samples
give the same bytes: a benchmark is reproducible down to its files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import av
import numpy as np

# Visually clean at 128 px and small on disk; ingestion decodes it, so quality beats size.
VIDEO_CRF = "20"
AUDIO_BIT_RATE = 64000


def write_mp4(
    path: Path, frames: Iterable[np.ndarray], fps: int, audio: np.ndarray, sample_rate: int
) -> None:
    """Encode `frames` ((size, size, 3) uint8 each, at `fps`) and `audio` ((samples,) float32
    mono at `sample_rate`) into `path`; written to a temporary name first, then renamed, so a
    killed run never leaves a half file under the final name."""
    partial = path.with_name(path.name + ".partial")
    with av.open(str(partial), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.pix_fmt = "yuv420p"
        video.codec_context.thread_count = 1
        video.options = {"crf": VIDEO_CRF, "preset": "veryfast"}
        sound = container.add_stream("aac", rate=sample_rate)
        sound.layout = "mono"
        sound.bit_rate = AUDIO_BIT_RATE
        sized = False
        for index, pixels in enumerate(frames):
            if not sized:
                video.height, video.width = pixels.shape[:2]
                sized = True
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        samples = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(audio, np.float32)[None, :], format="flt", layout="mono"
        )
        samples.sample_rate = sample_rate
        samples.pts = 0
        container.mux(sound.encode(samples))
        container.mux(sound.encode(None))
    os.replace(partial, path)
