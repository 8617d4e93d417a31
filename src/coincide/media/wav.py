"""The one WAV writer (search excerpts, the labeling page's clips): libsndfile through soundfile.

Kept apart from `audio` and `frontend`, which import PyAV and torch: the labeling page needs
neither to serve a clip.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile


def write_wav(target: Path | BinaryIO, samples: np.ndarray, sample_rate: int) -> None:
    """Write `(samples,)` float audio in [-1, 1] as a mono 16-bit PCM WAV file to a path or a
    binary file object (values beyond +-1 are clipped, not wrapped)."""
    soundfile.write(
        target, np.asarray(samples, dtype=np.float32), sample_rate, "PCM_16", format="WAV"
    )
