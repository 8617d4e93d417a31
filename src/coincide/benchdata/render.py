"""Turn a `ClipPlan` into its soundtrack and its frames. No randomness here: the plan holds it all.

Sound: background pieces crossfaded and scaled to the clip's level, each instance scaled so that
its RMS over the background's RMS (whole clip) is its SNR. Pictures: a crop of the clip's texture
panning slowly, with the held image composited at its drifting position, all under the light of
the clip's scene (when it has one).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from coincide.benchdata.plan import WHITE, ClipPlan, ImageHold
from coincide.benchdata.sources import SoundBank, Source, load_image
from coincide.errors import MediaError, UserError

# Short ramps at both ends of an instance: a cut recording must not click.
INSTANCE_RAMP_S = 0.005
# Below this RMS the background counts as silent and the level itself is the SNR reference.
SILENT_RMS = 1e-5
# The mix is scaled down as a whole when its peak would exceed this (keeps every SNR intact).
PEAK_LIMIT = 0.99


@dataclass(eq=False)
class Material:
    """The banks a plan's indices point into."""

    sounds: SoundBank
    backgrounds: SoundBank
    images: list[Source]
    textures: list[np.ndarray]  # (side, side, 3) uint8 each


def render_audio(plan: ClipPlan, material: Material, sample_rate: int) -> np.ndarray:
    """The clip's soundtrack: (plan.seconds * sample_rate,) float32 in [-1, 1]."""
    total = plan.seconds * sample_rate
    background = np.zeros(total, np.float64)
    for piece in plan.background:
        audio = material.backgrounds.audio(piece.source)
        segment = audio[piece.src_start : piece.src_start + piece.length].astype(np.float64)
        # Equal-power crossfade: the backgrounds are uncorrelated, so their powers add.
        if piece.fade_in:
            segment[: piece.fade_in] *= np.sin(np.linspace(0, np.pi / 2, piece.fade_in))
        if piece.fade_out:
            segment[-piece.fade_out :] *= np.cos(np.linspace(0, np.pi / 2, piece.fade_out))
        background[piece.dst_start : piece.dst_start + len(segment)] += segment

    reference = 10 ** (plan.level_db / 20)
    background_rms = float(np.sqrt(np.mean(background**2)))
    if background_rms > SILENT_RMS:
        background *= reference / background_rms

    mix = background
    ramp = int(INSTANCE_RAMP_S * sample_rate)
    for event in plan.sounds:
        instance = material.sounds.audio(event.source).astype(np.float64)
        rms = float(np.sqrt(np.mean(instance**2)))
        if rms <= 0:
            continue
        instance = instance * (reference * 10 ** (event.snr_db / 20) / rms)
        if len(instance) > 2 * ramp:
            instance[:ramp] *= np.linspace(0, 1, ramp)
            instance[-ramp:] *= np.linspace(1, 0, ramp)
        start = int(round(event.onset * sample_rate))
        mix[start : start + len(instance)] += instance[: total - start]

    peak = float(np.max(np.abs(mix)))
    if peak > PEAK_LIMIT:
        mix *= PEAK_LIMIT / peak
    return mix.astype(np.float32)


def render_frames(plan: ClipPlan, material: Material, fps: int, size: int) -> Iterator[np.ndarray]:
    """The clip's frames at `fps`: plan.seconds * fps arrays of (size, size, 3) uint8."""
    texture = material.textures[plan.texture].astype(np.float32)
    x0, y0, x1, y1 = plan.pan
    sprites = [_sprite(material.images[hold.source], hold, plan.colour) for hold in plan.images]
    # The scene's light falls on everything in view, background and object alike.
    lit = plan.tint != WHITE or plan.brightness != 1.0
    light = plan.brightness * np.asarray(plan.tint, np.float32)
    n_frames = plan.seconds * fps
    for i in range(n_frames):
        t = i / fps
        progress = i / max(n_frames - 1, 1)
        left = int(round(x0 + (x1 - x0) * progress))
        top = int(round(y0 + (y1 - y0) * progress))
        frame = texture[top : top + size, left : left + size].copy()
        shown = [k for k, hold in enumerate(plan.images) if hold.onset <= t < hold.offset]
        if shown:
            _composite(frame, *sprites[shown[0]], plan.images[shown[0]], t)
        if lit:
            frame *= light
        yield np.clip(frame + 0.5, 0, 255).astype(np.uint8)


def _sprite(
    source: Source, hold: ImageHold, colour: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The image ready to composite: (rgb (h, w, 3) float32 0..255, alpha (h, w, 1) float32 0..1).

    A grayscale image is a shape (a digit): its brightness is the alpha of the clip's colour, over
    a soft dark halo that keeps it readable on any background. An image with transparency keeps
    its alpha; any other image is pasted as an opaque picture.
    """
    try:
        image = load_image(source)
    except MediaError as err:
        raise UserError(
            f"image file {source.path} cannot be used ({err}); fix or remove it"
        ) from err
    width, height = image.size
    scale = hold.side / max(width, height)
    shape = (max(1, round(width * scale)), max(1, round(height * scale)))
    if image.mode in ("1", "L", "I", "I;16", "F"):
        mask = image.convert("L").resize(shape, Image.BILINEAR)
        halo = mask.filter(ImageFilter.MaxFilter(5)).filter(ImageFilter.GaussianBlur(2))
        alpha = np.asarray(mask, np.float32)[..., None] / 255
        halo_alpha = 0.6 * np.asarray(halo, np.float32)[..., None] / 255
        # Colour over halo: out = c*a + 0*(1-a)*h, with the combined alpha a + (1-a)*h.
        combined = alpha + (1 - alpha) * halo_alpha
        rgb = np.asarray(colour, np.float32) * np.divide(
            alpha, combined, out=np.zeros_like(alpha), where=combined > 0
        )
        return rgb, combined
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA").resize(shape, Image.BICUBIC), np.float32)
        return rgba[..., :3], rgba[..., 3:] / 255
    rgb = np.asarray(image.convert("RGB").resize(shape, Image.BICUBIC), np.float32)
    return rgb, np.ones(rgb.shape[:2] + (1,), np.float32)


def _composite(
    frame: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, hold: ImageHold, t: float
) -> None:
    """Blend the sprite into `frame` (size, size, 3) float32 in place, at its drifted position."""
    size = frame.shape[0]
    h, w = alpha.shape[:2]
    # The drift bounces off nothing: it is clamped, so the image never leaves the frame.
    x = int(round(np.clip(hold.x + hold.vx * (t - hold.onset), 0, size - w)))
    y = int(round(np.clip(hold.y + hold.vy * (t - hold.onset), 0, size - h)))
    region = frame[y : y + h, x : x + w]
    region[:] = rgb * alpha + region * (1 - alpha)
