"""The pool of picture backgrounds that the class images are composited over.

One pool per split, shared by all clips of that split, so that a background says nothing about
the class. By default the pool is textured noise generated from a seed (soft gradients, blotches
and shapes, blurred); a user can give real pictures instead (`--image-backgrounds`). Each texture
is larger than a frame so that a clip can pan across it, as a moving camera would.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from coincide.benchdata.sources import Source, load_image
from coincide.errors import MediaError, UserError

# Textures are 1.5 frames wide: room for a slow pan without ever showing an edge.
TEXTURE_SCALE = 1.5


def texture_side(frame_size: int) -> int:
    """Side in pixels of a pool texture for frames of `frame_size` pixels."""
    return int(round(frame_size * TEXTURE_SCALE))


def generated_textures(n: int, frame_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`n` textured-noise backgrounds, each (side, side, 3) uint8 with side = texture_side(size)."""
    return [_texture(texture_side(frame_size), rng) for _ in range(n)]


def _texture(side: int, rng: np.random.Generator) -> np.ndarray:
    # A gradient between two muted colours at a random angle sets the overall look.
    low, high = rng.uniform(20, 200, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:side, 0:side] / side
    ramp = np.cos(angle) * xs + np.sin(angle) * ys
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6)
    canvas = low + ramp[..., None] * (high - low)
    # Smooth colour blotches at two scales give it texture (bicubic upsampling of a coarse grid).
    for cells, amplitude in ((int(rng.integers(3, 7)), 45.0), (int(rng.integers(10, 24)), 20.0)):
        grid = rng.uniform(-1, 1, size=(cells, cells, 3))
        noise = np.stack(
            [
                np.asarray(
                    Image.fromarray(grid[..., c].astype(np.float32), mode="F").resize(
                        (side, side), Image.BICUBIC
                    )
                )
                for c in range(3)
            ],
            axis=-1,
        )
        canvas = canvas + amplitude * noise
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    # A few translucent shapes: edges and blobs like the clutter of a real scene.
    overlay = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = rng.uniform(-0.2, 1.0, size=2) * side
        w, h = rng.uniform(0.1, 0.5, size=2) * side
        colour = (*(int(v) for v in rng.uniform(0, 255, size=3)), int(rng.uniform(50, 140)))
        box = (float(x0), float(y0), float(x0 + w), float(y0 + h))
        if rng.random() < 0.5:
            draw.ellipse(box, fill=colour)
        else:
            draw.rectangle(box, fill=colour)
    image = Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")
    image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 2.5))))
    return np.asarray(image, dtype=np.uint8)


def picture_textures(sources: list[Source], frame_size: int) -> list[np.ndarray]:
    """User pictures as pool textures: centre-cropped to a square and resized.

    Returns one (side, side, 3) uint8 array per source, side = texture_side(frame_size).
    """
    side = texture_side(frame_size)
    textures = []
    for source in sources:
        try:
            picture = load_image(source).convert("RGB")
        except MediaError as err:
            raise UserError(
                f"background picture {source.path} cannot be used ({err}); fix or remove it"
            ) from err
        textures.append(np.asarray(ImageOps.fit(picture, (side, side), Image.BICUBIC)))
    return textures
