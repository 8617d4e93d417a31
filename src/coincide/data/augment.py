"""Augmentation of training batches, for stores too small to train on without memorizing them.

Every switch is a key of the `augment` config section and is off by default (0, or [1, 1] for a
crop scale). It runs on the CPU batch inside the loader (`PairBatches`), after the windows are
read; held-out batches are read with `read_batch` alone and are never augmented.

Audio, on each log-mel window `(mel, time)` of "audio" (anchors x1) and "aa_audio" (partners x2),
in this order:
- `time_shift` S: the window moves by s frames, s uniform in [-S, S], as a crop of the window
  concatenated with its neighbour in the same media (the next one for s > 0, the previous for
  s < 0; the other side when that one is missing, no shift for a one-window media). Stored
  windows are 96 frames every 100 (0.96 s per second), so the crop skips the 4 frames between
  two windows: a 40 ms jump, where a circular roll would glue the window's end to its start.
  Shifts stay below one window, well inside any coincidence time scale.
- `mix_prob`, `mix_snr_db` [lo, hi]: with probability mix_prob, a window y of another media is
  added as background at an SNR uniform in [lo, hi] dB, BYOL-A's mixup in the log-mel domain.
  The store holds log(m + c), m the magnitude mel spectrogram, c its log offset (0.01,
  `coincide.media.frontend.LOG_OFFSET`). Independent sounds add in power, so the mixture is
  log(sqrt(m_x^2 + g^2 m_y^2) + c), with g = sqrt(E_x / E_y) 10^(-snr / 20) and E the mel
  energy sum(m^2) of each window. The background comes from this loader's media (training
  media only) and not from any media in the batch, so that no pair shares sound with another
  pair's partner (a false coincidence among the negatives).
- `gain_db` G: a gain uniform in [-G, G] dB, the same for the whole window: m becomes a m,
  a = 10^(gain / 20), so x = log(m + c) becomes log(a m + c), a shift of log(a) where the sound
  is well above the offset c and none on the floor.
- `filter_db` E, `filter_bands` K: a random equaliser (FilterAugment's linear type, Nam et al.
  2022): gains uniform in [-E, E] dB at K points spread evenly over the mel axis, interpolated
  linearly between them, applied to the magnitudes like `gain_db` but per mel band. Two views
  of one media then differ in spectral colour, so a coincidence that rests on the colour of a
  place or a microphone alone gets harder, while a sound's shape across bands survives.
- `freq_masks`, `freq_mask_width` F and `time_masks`, `time_mask_width` T: SpecAugment's masks
  (Park et al. 2019): each mask fills a band of w mel bins (frames), w uniform in [0, F] ([0, T])
  at a uniform position, with the window's mean, the zero of features normalised per window.

Images, on each AV partner frame "av_frames" `(H, W, 3)` uint8, with torchvision's functional
ops, in this order: `rotate_deg` R (an angle uniform in [-R, R] degrees, bilinear, corners
black), `crop_scale` [lo, hi] (a crop of area fraction uniform in [lo, hi] and aspect ratio
log-uniform in [3/4, 4/3], resized back to H x W), `jitter` j (brightness, contrast and
saturation factors uniform in [1 - j, 1 + j], torchvision's three adjustments applied as the
one linear map they make together), `grayscale` p (with probability p the frame becomes its
luma in all three channels, SimCLR's random grayscale: the colour of the light stops being a
cue), `hflip` (mirror with probability 1/2; off by default,
since mirrored text and digits change meaning).

Every view draws its own parameters (x1 and x2 of one pair are augmented independently). The
draws are a pure function of (seed, batch number, the batch's anchor windows): a resumed run
augments exactly as an uninterrupted one, and two streams (stages, ranks) that reach the same
batch number still draw differently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from coincide.data.pairs import TIME_TOLERANCE_S, PairBatch, WindowTable
from coincide.errors import UserError
from coincide.store.features import FeatureStore

# The frontend's log offset c, for stores whose header does not say (synthetic test stores).
DEFAULT_LOG_OFFSET = 0.01
# Aspect ratios of the random resized crop (torchvision's RandomResizedCrop default).
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# Separates augmentation draws from the sampler's, which use the same seed.
AUGMENT_SALT = 0xA06
VIEWS = {"audio": 1, "aa_audio": 2, "av_frames": 3}
# torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma).
GRAY_WEIGHTS = torch.tensor([0.2989, 0.587, 0.114])


@dataclass
class AudioAugmentConfig:
    """Log-mel augmentation (module docstring: the exact operations). 0 turns a switch off.

    time_shift: max |shift| in frames (< the window's frames). gain_db: max |gain| in dB.
    freq_masks / time_masks: masks per window; freq_mask_width / time_mask_width: max width.
    mix_prob: probability of mixing in another media's window; mix_snr_db: its SNR range [lo, hi].
    filter_db: max |gain| in dB of the random equaliser; filter_bands: its points over the mel axis.
    """

    time_shift: int = 0
    gain_db: float = 0.0
    freq_masks: int = 0
    freq_mask_width: int = 0
    time_masks: int = 0
    time_mask_width: int = 0
    mix_prob: float = 0.0
    mix_snr_db: list[float] = field(default_factory=lambda: [10.0, 20.0])
    filter_db: float = 0.0
    filter_bands: int = 4

    def __post_init__(self) -> None:
        if self.filter_bands < 2:
            raise UserError(
                f"augment.audio.filter_bands is {self.filter_bands}; use at least 2 points."
            )
        _non_negative("augment.audio.filter_db", self.filter_db)
        for name in ("time_shift", "freq_masks", "freq_mask_width", "time_masks"):
            _non_negative(f"augment.audio.{name}", getattr(self, name))
        _non_negative("augment.audio.time_mask_width", self.time_mask_width)
        _non_negative("augment.audio.gain_db", self.gain_db)
        if not 0.0 <= self.mix_prob <= 1.0:
            raise UserError(f"augment.audio.mix_prob is {self.mix_prob}; use a value in [0, 1].")
        _range("augment.audio.mix_snr_db", self.mix_snr_db, -math.inf, math.inf)

    @property
    def enabled(self) -> bool:
        masks = self.freq_masks * self.freq_mask_width + self.time_masks * self.time_mask_width
        return bool(self.time_shift or self.gain_db or masks or self.mix_prob or self.filter_db)


@dataclass
class ImageAugmentConfig:
    """Frame augmentation (module docstring: the exact operations).

    crop_scale: [lo, hi] area fraction of the random resized crop ([1, 1] = off);
    jitter: brightness / contrast / saturation strength in [0, 1) (0 = off);
    rotate_deg: max |angle| in degrees (0 = off); grayscale: probability of a gray frame;
    hflip: random horizontal mirror.
    """

    crop_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    jitter: float = 0.0
    rotate_deg: float = 0.0
    grayscale: float = 0.0
    hflip: bool = False

    def __post_init__(self) -> None:
        _range("augment.image.crop_scale", self.crop_scale, 0.0, 1.0)
        if self.crop_scale[0] <= 0.0:
            raise UserError("augment.image.crop_scale must start above 0; use e.g. [0.6, 1.0].")
        if not 0.0 <= self.jitter < 1.0:
            raise UserError(f"augment.image.jitter is {self.jitter}; use a value in [0, 1).")
        if not 0.0 <= self.grayscale <= 1.0:
            raise UserError(
                f"augment.image.grayscale is {self.grayscale}; use a probability in [0, 1]."
            )
        if not 0.0 <= self.rotate_deg <= 180.0:
            raise UserError(
                f"augment.image.rotate_deg is {self.rotate_deg}; use degrees in [0, 180]."
            )

    @property
    def crops(self) -> bool:
        return self.crop_scale != [1.0, 1.0]

    @property
    def enabled(self) -> bool:
        return bool(self.crops or self.jitter or self.rotate_deg or self.grayscale or self.hflip)


@dataclass
class AugmentConfig:
    """The `augment` section: training-batch augmentation, all off by default."""

    audio: AudioAugmentConfig = field(default_factory=AudioAugmentConfig)
    image: ImageAugmentConfig = field(default_factory=ImageAugmentConfig)

    @property
    def enabled(self) -> bool:
        return self.audio.enabled or self.image.enabled


def _non_negative(name: str, value: float) -> None:
    if value < 0:
        raise UserError(f"{name} is {value}; it must not be negative.")


def _range(name: str, value: list[float], low: float, high: float) -> None:
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        raise UserError(
            f"{name} is {value}; give [lo, hi] with lo <= hi"
            + (f" inside [{low:g}, {high:g}]." if math.isfinite(low) else ".")
        )


# ---------------------------------------------------------------------------------------------
# The operations, on whole batches with given parameters


def shift_windows(
    windows: torch.Tensor, neighbours: torch.Tensor, shift: np.ndarray
) -> torch.Tensor:
    """Windows `(B, mel, T)` moved by `shift` (B,) frames in (-T, T).

    Row i is frames [s, s + T) of [window, neighbour] for s >= 0 (the next window) and frames
    [T + s, 2T + s) of [neighbour, window] for s < 0 (the previous one); s = 0 gives the window.
    """
    t = windows.shape[-1]
    shift_t = torch.from_numpy(np.asarray(shift, dtype=np.int64))
    later = (shift_t > 0)[:, None, None]
    left = torch.where(shift_t[:, None, None] < 0, neighbours, windows)
    right = torch.where(later, neighbours, windows)
    both = torch.cat([left, right], dim=-1)  # (B, mel, 2T)
    start = torch.where(shift_t < 0, t + shift_t, shift_t)
    columns = (start[:, None] + torch.arange(t))[:, None, :].expand(-1, windows.shape[1], -1)
    return torch.gather(both, -1, columns)


def magnitude(logmel: torch.Tensor, log_offset: float) -> torch.Tensor:
    """The mel magnitudes m of stored values log(m + c) (clamped at 0 against rounding)."""
    return (logmel.exp() - log_offset).clamp_(min=0.0)


def apply_gain(logmel: torch.Tensor, gain_db: np.ndarray, log_offset: float) -> torch.Tensor:
    """log(a m + c) for windows `(B, ..., mel, T)`, a = 10^(gain_db / 20) per window (B,)
    or per window and mel band (B, mel)."""
    gain_db = np.asarray(gain_db, dtype=np.float64)
    gain = torch.from_numpy(10.0 ** (gain_db / 20.0)).float()
    if gain_db.ndim == 1:
        gain = gain.view(-1, *([1] * (logmel.dim() - 1)))
    else:  # (B, mel): one gain per band, the same over time
        gain = gain.view(gain.shape[0], *([1] * (logmel.dim() - 3)), gain.shape[1], 1)
    return torch.log(gain * magnitude(logmel, log_offset) + log_offset)


def draw_filter(
    rng: np.random.Generator, batch: int, bands: int, max_db: float, mel: int
) -> np.ndarray:
    """Random equaliser gains in dB `(batch, mel)`: uniform in [-max_db, max_db] at `bands`
    points spread evenly over the mel axis, linear in between."""
    points = np.linspace(0.0, mel - 1.0, bands)
    gains = rng.uniform(-max_db, max_db, size=(batch, bands))
    bins = np.arange(mel, dtype=np.float64)
    return np.stack([np.interp(bins, points, row) for row in gains])


def background_gain(
    logmel: torch.Tensor, background: torch.Tensor, snr_db: np.ndarray, log_offset: float
) -> torch.Tensor:
    """g per window (B,) such that 10 log10(E_x / (g^2 E_y)) = snr_db; 0 for a silent y."""
    dims = tuple(range(1, logmel.dim()))
    energy_x = magnitude(logmel, log_offset).square_().sum(dims, dtype=torch.float64)
    energy_y = magnitude(background, log_offset).square_().sum(dims, dtype=torch.float64)
    ratio = torch.from_numpy(10.0 ** (-np.asarray(snr_db, dtype=np.float64) / 20.0))
    g = torch.sqrt(energy_x / energy_y.clamp(min=1e-30)) * ratio
    return torch.where(energy_y > 0, g, torch.zeros_like(g)).float()


def mix_background(
    logmel: torch.Tensor, background: torch.Tensor, gain: torch.Tensor, log_offset: float
) -> torch.Tensor:
    """log(sqrt(m_x^2 + g^2 m_y^2) + c) of windows x, y `(B, ..., mel, T)` and gains g (B,).

    Written as x + log1p((m - m_x) e^-x), which never falls below x; rows with g = 0 are x.
    """
    g = gain.view(-1, *([1] * (logmel.dim() - 1)))
    m_x, m_y = magnitude(logmel, log_offset), magnitude(background, log_offset)
    mixed = torch.sqrt(m_x.square() + (g * m_y).square())
    out = logmel + torch.log1p((mixed - m_x).clamp_(min=0.0) * torch.exp(-logmel))
    return torch.where(g > 0, out, logmel)


def fill_bands(
    logmel: torch.Tensor, starts: np.ndarray, widths: np.ndarray, axis: int
) -> torch.Tensor:
    """Windows `(B, ..., mel, T)` with bands [start, start + width) of `axis` (-2: mel, -1:
    time) set to each window's mean; starts, widths `(B, masks)`."""
    size = logmel.shape[axis]
    positions = torch.arange(size)
    lo = torch.from_numpy(np.asarray(starts, dtype=np.int64))[..., None]  # (B, masks, 1)
    hi = lo + torch.from_numpy(np.asarray(widths, dtype=np.int64))[..., None]
    masked = ((positions >= lo) & (positions < hi)).any(dim=1)  # (B, size)
    shape = [logmel.shape[0]] + [1] * (logmel.dim() - 1)
    shape[axis] = size
    dims = tuple(range(1, logmel.dim()))
    mean = logmel.mean(dim=dims, keepdim=True)
    return torch.where(masked.view(shape), mean, logmel)


def draw_bands(
    rng: np.random.Generator, batch: int, masks: int, max_width: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """SpecAugment band draws: (starts, widths) `(batch, masks)`, widths uniform in
    [0, max_width], starts uniform over the positions where the band fits in `size`."""
    widths = rng.integers(0, max_width + 1, size=(batch, masks))
    starts = (rng.random((batch, masks)) * (size - widths + 1)).astype(np.int64)
    return starts, widths


def augment_images(
    frames: torch.Tensor, cfg: ImageAugmentConfig, rng: np.random.Generator
) -> torch.Tensor:
    """uint8 frames `(B, H, W, 3)` -> augmented uint8 frames `(B, H, W, 3)`, per-image draws."""
    b, h, w = frames.shape[:3]
    angle = rng.uniform(-cfg.rotate_deg, cfg.rotate_deg, b) if cfg.rotate_deg else None
    boxes = _crop_boxes(rng, b, h, w, cfg.crop_scale) if cfg.crops else None
    factors = rng.uniform(1 - cfg.jitter, 1 + cfg.jitter, (b, 3)) if cfg.jitter else None
    gray = rng.random(b) < cfg.grayscale if cfg.grayscale else None
    flip = rng.random(b) < 0.5 if cfg.hflip else None
    # Image by image, each op on a (3, H, W) tensor that stays in the CPU's cache (a whole
    # batch of float images does not: B = 512 is 100 MB).
    out = torch.empty_like(frames)
    for i, image in enumerate(frames.permute(0, 3, 1, 2)):  # views in torchvision's layout
        if angle is not None:
            image = TF.rotate(image, float(angle[i]), interpolation=InterpolationMode.BILINEAR)
        if boxes is not None:
            top, left, height, width = (int(v) for v in boxes[i])
            image = TF.resized_crop(image, top, left, height, width, [h, w], antialias=True)
        if factors is not None:
            image = jitter_colours(image[None], factors[i : i + 1])[0]
        if gray is not None and gray[i]:
            image = TF.rgb_to_grayscale(image, num_output_channels=3)
        if flip is not None and flip[i]:
            image = TF.horizontal_flip(image)
        out[i] = image.permute(1, 2, 0)
    return out


def jitter_colours(images: torch.Tensor, factors: np.ndarray) -> torch.Tensor:
    """uint8 images `(B, 3, H, W)` through torchvision's adjust_brightness, adjust_contrast and
    adjust_saturation with factors `(B, 3)` (b, c, s), as the one linear map the three make
    when nothing clips between them (one rounding, and 1.7x faster than the three calls, which
    each convert to float and back: benchmarks/augment.py):

        out = c b (s x + (1 - s) gray(x)) + (1 - c) b mean(gray(x))
    """
    x = images.float()
    gray = torch.einsum("bchw,c->bhw", x, GRAY_WEIGHTS).unsqueeze(1)  # (B, 1, H, W)
    mean = gray.mean(dim=(2, 3), keepdim=True)
    b, c, s = (torch.from_numpy(factors[:, k]).float().view(-1, 1, 1, 1) for k in range(3))
    offset = gray * (c * b * (1 - s)) + (1 - c) * b * mean
    return torch.addcmul(offset, x, c * b * s).clamp_(0, 255).round_().to(torch.uint8)


def _crop_boxes(rng: np.random.Generator, b: int, h: int, w: int, scale: list[float]) -> np.ndarray:
    """(B, 4) crops (top, left, height, width) of area fraction in `scale`, ratio in CROP_RATIO."""
    area = rng.uniform(scale[0], scale[1], b) * h * w
    ratio = np.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), b))
    width = np.clip(np.round(np.sqrt(area * ratio)), 1, w).astype(np.int64)
    height = np.clip(np.round(np.sqrt(area / ratio)), 1, h).astype(np.int64)
    top = (rng.random(b) * (h - height + 1)).astype(np.int64)
    left = (rng.random(b) * (w - width + 1)).astype(np.int64)
    return np.stack([top, left, height, width], axis=1)


# ---------------------------------------------------------------------------------------------
# The loader's augmenter


class BatchAugment:
    """Augments the batches of one training stream (`PairBatches(..., augment=this)`).

    store: the feature store (neighbour and background windows are read from it); table: its
    `WindowTable`; media: the media codes backgrounds may come from (the stream's training
    media); seed: the run's seed.
    """

    def __init__(
        self,
        cfg: AugmentConfig,
        store: FeatureStore,
        table: WindowTable,
        media: np.ndarray,
        seed: int,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.seed = int(seed)
        self.log_offset = float(store.frontend.get("log_offset", DEFAULT_LOG_OFFSET))
        mel, frames = store.logmel.shape[1:]
        audio = cfg.audio
        if audio.time_shift >= frames:
            raise UserError(
                f"augment.audio.time_shift is {audio.time_shift} frames, not below the store's "
                f"{frames}-frame windows; lower it."
            )
        for key, width, size in (
            ("freq", audio.freq_mask_width, mel),
            ("time", audio.time_mask_width, frames),
        ):
            if width > size:
                raise UserError(
                    f"augment.audio.{key}_mask_width is {width}, wider than the store's {size} "
                    f"{'mel bins' if key == 'freq' else 'frames'}; lower it."
                )
        # Window neighbours, by global store position (-1: none within one window step).
        step_s = store.frontend.get("window_step", 16000) / store.frontend.get("sample_rate", 16000)
        n = len(table)
        same_media = table.media[1:] == table.media[:-1]
        adjacent = same_media & (np.abs(np.diff(table.time) - step_s) <= TIME_TOLERANCE_S)
        self.next_window = np.full(n, -1, dtype=np.int64)
        self.prev_window = np.full(n, -1, dtype=np.int64)
        self.next_window[table.window[:-1][adjacent]] = table.window[1:][adjacent]
        self.prev_window[table.window[1:][adjacent]] = table.window[:-1][adjacent]
        self.media_of_window = np.empty(n, dtype=np.int64)
        self.media_of_window[table.window] = table.media
        self.table = table
        self.media = np.unique(np.asarray(media, dtype=np.int64))

    def __call__(
        self, batch: dict[str, torch.Tensor], pairs: PairBatch, number: int
    ) -> dict[str, torch.Tensor]:
        """The batch of `read_batch(store, pairs)` (batch `number` of its stream), augmented."""
        out = dict(batch)
        windows = {"audio": pairs.anchors, "aa_audio": pairs.aa}
        taken = np.concatenate([w for w in (pairs.anchors, pairs.aa, pairs.av) if w is not None])
        for key, tensor in batch.items():
            rng = self._rng(key, pairs, number)
            if key in windows and self.cfg.audio.enabled:
                out[key] = self.audio(tensor, windows[key], taken, rng)
            elif key == "av_frames" and self.cfg.image.enabled:
                out[key] = augment_images(tensor, self.cfg.image, rng)
        return out

    def _rng(self, key: str, pairs: PairBatch, number: int) -> np.random.Generator:
        entropy = [AUGMENT_SALT, self.seed, int(number), VIEWS.get(key, 0), *pairs.anchors.tolist()]
        return np.random.default_rng(entropy)

    def audio(
        self,
        logmel: torch.Tensor,
        windows: np.ndarray,
        taken: np.ndarray,
        rng: np.random.Generator,
    ) -> torch.Tensor:
        """Log-mel windows `(B, 1, mel, T)` of store `windows` (B,), augmented; `taken`: the
        windows of the whole batch, whose media give no background."""
        cfg, c = self.cfg.audio, self.log_offset
        b, _, mel, frames = logmel.shape
        x = logmel
        if cfg.time_shift:
            shift = rng.integers(-cfg.time_shift, cfg.time_shift + 1, size=b)
            neighbours, shift = self._neighbours(windows, shift)
            x = shift_windows(x[:, 0], neighbours, shift).unsqueeze(1)
        if cfg.mix_prob:
            mixed = rng.random(b) < cfg.mix_prob
            snr = rng.uniform(cfg.mix_snr_db[0], cfg.mix_snr_db[1], size=b)
            source = self._backgrounds(rng, windows, taken)
            rows = np.flatnonzero(mixed & (source >= 0))
            if len(rows):
                x_rows = x[rows]
                y = torch.from_numpy(self.store.logmel[source[rows]]).unsqueeze(1)
                x = x.clone()
                x[rows] = mix_background(x_rows, y, background_gain(x_rows, y, snr[rows], c), c)
        if cfg.gain_db:
            x = apply_gain(x, rng.uniform(-cfg.gain_db, cfg.gain_db, size=b), c)
        if cfg.filter_db:
            x = apply_gain(x, draw_filter(rng, b, cfg.filter_bands, cfg.filter_db, mel), c)
        if cfg.freq_masks and cfg.freq_mask_width:
            x = fill_bands(x, *draw_bands(rng, b, cfg.freq_masks, cfg.freq_mask_width, mel), -2)
        if cfg.time_masks and cfg.time_mask_width:
            x = fill_bands(x, *draw_bands(rng, b, cfg.time_masks, cfg.time_mask_width, frames), -1)
        return x.contiguous()

    def _neighbours(
        self, windows: np.ndarray, shift: np.ndarray
    ) -> tuple[torch.Tensor, np.ndarray]:
        """The neighbour window of each shifted window `(B, mel, T)` and the shifts it allows:
        the sign flips where only the other neighbour exists, 0 where there is none."""
        nxt, prev = self.next_window[windows], self.prev_window[windows]
        flip = np.where(shift > 0, nxt < 0, prev < 0) & (shift != 0)
        shift = np.where(flip, -shift, shift)
        neighbour = np.where(shift > 0, nxt, prev)
        shift = np.where(neighbour < 0, 0, shift)
        read = shift != 0
        out = torch.zeros((len(windows), *self.store.logmel.shape[1:]))
        if read.any():
            out[torch.from_numpy(read)] = torch.from_numpy(self.store.logmel[neighbour[read]])
        return out, shift

    def _backgrounds(
        self, rng: np.random.Generator, windows: np.ndarray, taken: np.ndarray
    ) -> np.ndarray:
        """A background window per row (B,), from a media of `self.media` that is not in the
        batch (when every one is, any but the row's own); -1 when there is none."""
        b = len(windows)
        free = np.setdiff1d(self.media, self.media_of_window[taken], assume_unique=False)
        if len(free):
            media = free[rng.integers(0, len(free), size=b)]
        elif len(self.media) >= 2:
            own = np.searchsorted(self.media, self.media_of_window[windows])
            draw = rng.integers(0, len(self.media) - 1, size=b)
            media = self.media[draw + (draw >= own)]
        else:
            return np.full(b, -1, dtype=np.int64)
        start, end = self.table.media_start[media], self.table.media_end[media]
        offset = (rng.random(b) * (end - start)).astype(np.int64)
        return self.table.window[start + offset]
