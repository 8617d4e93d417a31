"""The raw material of a benchmark: labeled sounds, labeled images and background recordings.

Every source belongs to one split, "train", "val" or "test", so that no recording or image of the
validation or test clips is ever heard or seen in the training clips (nor one of the test clips in
the validation clips). Sources come from CSV files (`read_*_csv`) or
from the presets in `coincide.benchdata.presets`; this module also decodes them.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pandas as pd
import soundfile
import soxr
from PIL import Image

from coincide.errors import MediaError, UserError

SPLITS = ("train", "val", "test")
# The id of each split in the random streams. Train and test keep the ids they had before the
# validation split existed, so their clips are drawn as before.
SPLIT_IDS = {"train": 0, "test": 1, "val": 2}
# Shares of the groups (recordings, files) that a CSV without a `split` column sends to the test
# and validation splits; the rest, 60%, trains while the held-out pools stay varied.
TEST_SHARE = 0.25
VAL_SHARE = 0.15


@dataclass(frozen=True, eq=False)
class Source:
    """One recording or image.

    `path` points to a file; `pixels` holds an image in memory instead (MNIST from IDX files).
    `group` ties together sources that must share a split (clips of one source recording).
    """

    label: str
    split: str
    ref: str
    group: str
    path: Path | None = None
    pixels: np.ndarray | None = None
    attribution: str = ""


def decode_audio(path: Path, sample_rate: int) -> np.ndarray:
    """Decode any audio file to mono float32 at `sample_rate`; returns (samples,).

    soundfile reads wav/flac/ogg directly; anything else (mp3, m4a, the audio of a video) goes
    through PyAV. Resampling uses soxr's high-quality filter, which is deterministic.
    """
    try:
        samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
        mono = samples.mean(axis=1)
    except soundfile.LibsndfileError:
        mono, rate = _decode_with_pyav(path)
    if mono.size == 0:
        raise MediaError("no audio samples")
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def _decode_with_pyav(path: Path) -> tuple[np.ndarray, int]:
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise MediaError("no audio stream")
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            chunks = [
                out.to_ndarray().reshape(-1)
                for frame in container.decode(stream)
                for out in resampler.resample(frame)
            ]
            chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    except av.FFmpegError as err:
        raise MediaError(f"cannot decode audio ({err.strerror})") from err
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), rate


def load_image(source: Source) -> Image.Image:
    """The image of a source as a PIL image in its own mode (L, RGB, RGBA, ...)."""
    if source.pixels is not None:
        return Image.fromarray(source.pixels)
    try:
        with Image.open(source.path) as image:
            image.load()
            return image.copy()
    except OSError as err:
        raise MediaError(f"cannot read image ({err})") from err


@dataclass(eq=False)
class SoundBank:
    """Sound sources with their decoded audio, decoded once and kept (per process)."""

    sources: list[Source]
    sample_rate: int
    _cache: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def audio(self, index: int) -> np.ndarray:
        """Decoded audio of source `index`: (samples,) float32 at `sample_rate`."""
        if index not in self._cache:
            source = self.sources[index]
            try:
                self._cache[index] = decode_audio(source.path, self.sample_rate)
            except MediaError as err:
                raise UserError(
                    f"sound file {source.path} cannot be used ({err}); fix or remove it"
                ) from err
        return self._cache[index]

    def seconds(self, index: int) -> float:
        """Duration of source `index` in seconds, after resampling."""
        return len(self.audio(index)) / self.sample_rate

    def __getstate__(self) -> dict:
        # Worker processes decode what they need themselves rather than receive the whole cache.
        return {"sources": self.sources, "sample_rate": self.sample_rate, "_cache": {}}


def split_of(group: str, test_share: float = TEST_SHARE, val_share: float = VAL_SHARE) -> str:
    """A stable split for a group without an explicit one: a hash, so it never depends on order.

    The test buckets are those of the two-split rule that came before, so a group that was test
    stays test; validation takes the next `val_share` of the buckets from train."""
    bucket = zlib.crc32(group.encode("utf-8")) % 1000
    if bucket < test_share * 1000:
        return "test"
    return "val" if bucket < (test_share + val_share) * 1000 else "train"


def _read_csv(csv_path: Path, required: tuple[str, ...], what: str) -> pd.DataFrame:
    if not csv_path.is_file():
        raise UserError(f"{what} CSV {csv_path} does not exist; pass an existing file")
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    table.columns = [c.strip() for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise UserError(
            f"{what} CSV {csv_path} lacks the column(s) {', '.join(missing)}; "
            f"give it a header with {', '.join(required)}"
        )
    if table.empty:
        raise UserError(f"{what} CSV {csv_path} has no rows; list at least one file")
    return table


def _resolve(csv_path: Path, value: str) -> Path:
    path = Path(value.strip())
    return path if path.is_absolute() else (csv_path.parent / path).resolve()


def _sources_from_table(table: pd.DataFrame, csv_path: Path, what: str) -> list[Source]:
    sources = []
    for fields in table.to_dict("records"):
        path = _resolve(csv_path, fields["path"])
        if not path.is_file():
            raise UserError(f"{what} file {path} listed in {csv_path} does not exist; fix the path")
        # The path as written, not as resolved: a hash split must not depend on where the CSV is.
        group = fields.get("group", "").strip() or fields["path"].strip()
        split = fields.get("split", "").strip() or split_of(group)
        if split not in SPLITS:
            raise UserError(
                f"{what} file {path} in {csv_path} has split {split!r}; use train, val or test"
            )
        sources.append(
            Source(
                label=fields.get("label", "").strip(),
                split=split,
                ref=fields["path"].strip(),
                group=group,
                path=path,
                attribution=fields.get("attribution", "").strip(),
            )
        )
    return sources


def read_labeled_csv(csv_path: Path, what: str) -> list[Source]:
    """Sounds or images from a CSV `path,label[,split][,group][,attribution]`.

    Paths are absolute or relative to the CSV's folder. Without a `split` column each group (by
    default each file) goes to train, val or test by a stable hash of its name (60/15/25%).
    """
    table = _read_csv(csv_path, ("path", "label"), what)
    sources = _sources_from_table(table, csv_path, what)
    empty = [s.ref for s in sources if not s.label]
    if empty:
        raise UserError(f"{what} file {empty[0]} in {csv_path} has an empty label; give it one")
    return sources


def read_background_csv(csv_path: Path, what: str) -> list[Source]:
    """Background recordings or images from a CSV `path[,split][,group][,label][,attribution]`."""
    return _sources_from_table(_read_csv(csv_path, ("path",), what), csv_path, what)


def read_pairing_csv(csv_path: Path) -> dict[str, str]:
    """The image label shown with each sound label, from a CSV `sound_label,image_label`."""
    table = _read_csv(csv_path, ("sound_label", "image_label"), "pairing")
    pairing: dict[str, str] = {}
    for sound_label, image_label in zip(table["sound_label"], table["image_label"], strict=True):
        if sound_label.strip() in pairing:
            raise UserError(
                f"pairing CSV {csv_path} maps sound label {sound_label!r} twice; keep one row"
            )
        pairing[sound_label.strip()] = image_label.strip()
    return pairing
