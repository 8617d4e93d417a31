"""Every random choice of a clip, made up front: a `ClipPlan` that rendering turns into media.

Two random streams per clip keep the nuisances honest: `nuisance_rng` draws what must not predict
the class (the scene, background recordings, overall level, picture background, camera pan, digit
colour) and never sees the class; `content_rng` draws the class's instances and the distractor.
Both streams are seeded from (seed, split, clip index) alone, so a clip is reproducible on its own.

A scene (`--scene shared`) is what real video shares between sound and picture besides the
class: the place. Each split has a few scenes, each with its own ambience recordings, its own
picture backgrounds and its own light; a clip draws one scene from the nuisance stream, so the
scene is tied to both modalities but never to the class.
"""

from __future__ import annotations

from colorsys import hsv_to_rgb
from dataclasses import dataclass, replace

import numpy as np

from coincide.benchdata.params import BenchParams
from coincide.benchdata.sources import SPLIT_IDS, SoundBank

# Crossfade between two background recordings that follow each other in a clip.
BACKGROUND_FADE_S = 0.25
# A background piece is at least this long (or the whole recording when shorter), so a clip
# hears a few recordings at most and each one long enough to be recognisable as a scene.
BACKGROUND_MIN_PIECE_S = 2.0
# Silence kept between consecutive instances so that two instances never overlap.
INSTANCE_GAP_S = 0.05
# Drift of a held image, pixels per second, either way: the picture moves a little, like video.
DRIFT_PX_S = 3.0


@dataclass(frozen=True)
class SoundEvent:
    """One recording placed in the clip; `onset`/`offset` in seconds (sample-exact)."""

    source: int
    onset: float
    offset: float
    snr_db: float
    label: str
    kind: str  # "target" or "distractor"


@dataclass(frozen=True)
class ImageHold:
    """One image shown from `onset` to `offset` s, its longer side `side` px, top-left (x, y) px
    at onset, drifting by (vx, vy) px/s."""

    source: int
    onset: float
    offset: float
    label: str
    kind: str
    side: int
    x: float
    y: float
    vx: float
    vy: float


@dataclass(frozen=True)
class BackgroundPiece:
    """Samples [src_start, src_start + length) of a background recording, placed at dst_start,
    faded in / out over `fade_in` / `fade_out` samples where it overlaps its neighbours."""

    source: int
    src_start: int
    dst_start: int
    length: int
    fade_in: int
    fade_out: int


# Neutral light: the picture as composed (the "independent" design has no scenes).
WHITE = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class ClipPlan:
    """Everything needed to render one clip. `path` is relative to the benchmark folder.

    `scene` is the index of the clip's scene in its split (-1: no scene model); `tint` (RGB gains,
    mean 1) and `brightness` are the light of that scene, applied to the whole frame."""

    path: str
    split: str
    label: str
    image_label: str
    seconds: int
    level_db: float
    texture: int
    pan: tuple[float, float, float, float]  # texture crop top-left (x, y) at start, then at end
    colour: tuple[int, int, int]
    background: tuple[BackgroundPiece, ...]
    sounds: tuple[SoundEvent, ...]
    images: tuple[ImageHold, ...]
    scene: int = -1
    tint: tuple[float, float, float] = WHITE
    brightness: float = 1.0


@dataclass(frozen=True)
class Scene:
    """A place clips are filmed in: the ambience heard there and the backgrounds seen there
    (indices into the split's banks), and its light: RGB gains `tint` (mean 1) and a gain
    `brightness`."""

    backgrounds: tuple[int, ...]
    textures: tuple[int, ...]
    tint: tuple[float, float, float]
    brightness: float


@dataclass(frozen=True)
class SplitPools:
    """What one split may draw from: indices into the banks of `coincide.benchdata.compose`."""

    sounds: dict[str, list[int]]  # sound label -> sound sources
    images: dict[str, list[int]]  # image label -> image sources
    backgrounds: list[int]  # background recordings
    textures: list[int]  # picture backgrounds
    texture_side: int
    scenes: tuple[Scene, ...] = ()  # empty: every nuisance drawn from the whole split's pools


def plan_scenes(
    backgrounds: list[int], textures: list[int], params: BenchParams, rng: np.random.Generator
) -> tuple[Scene, ...]:
    """`params.scenes` scenes over a split's pools, drawn from `rng` (a stream of the split).

    `backgrounds` comes ordered so that neighbours sound alike (by ambient class, then source
    recording): each scene takes a contiguous run of it, so a scene sounds like one kind of place.
    Textures are dealt at random. Where a pool has fewer items than there are scenes, scenes share
    its items (scene s takes item s mod n). Hues are spread evenly around the colour circle from a
    random start and light levels evenly over `params.brightness`, in a random order, so that the
    scenes of a split look as different as the parameters allow.
    """
    n = params.scenes
    shuffled = [textures[i] for i in rng.permutation(len(textures))]
    hue_start = float(rng.uniform(0, 1))
    levels = np.linspace(*params.brightness, n)[rng.permutation(n)]
    scenes = []
    for s in range(n):
        tint = np.asarray(hsv_to_rgb((hue_start + s / n) % 1.0, 1.0, 1.0))
        gains = (1 - params.tint) + params.tint * tint
        scenes.append(
            Scene(
                backgrounds=_share(backgrounds, s, n),
                textures=_share(shuffled, s, n),
                tint=tuple(float(g) for g in gains / gains.mean()),
                brightness=float(levels[s]),
            )
        )
    return tuple(scenes)


def _share(items: list[int], s: int, n: int) -> tuple[int, ...]:
    """Scene `s`'s share of `items` among `n` scenes: a contiguous run, or one shared item."""
    if len(items) < n:
        return (items[s % len(items)],)
    return tuple(int(i) for i in np.array_split(np.asarray(items), n)[s])


def clip_rngs(seed: int, split: str, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """The (nuisance, content) random streams of clip `index` of `split`."""
    split_id = SPLIT_IDS[split]
    return (
        np.random.default_rng([seed, split_id, index, 0]),
        np.random.default_rng([seed, split_id, index, 1]),
    )


def clip_path(split: str, index: int) -> str:
    """Where clip `index` of `split` goes, relative to the benchmark folder (no label in it)."""
    return f"{split}/clip_{index:05d}.mp4"


def plan_clip(
    split: str,
    index: int,
    label: str,
    image_label: str,
    params: BenchParams,
    pools: SplitPools,
    sounds: SoundBank,
    backgrounds: SoundBank,
) -> ClipPlan:
    """Draw the plan of clip `index` of `split`, whose dominant class is `label` (shown as
    `image_label`)."""
    nuisance_rng, content_rng = clip_rngs(params.seed, split, index)

    # Nuisances first, from their own stream: nothing here depends on the class. The scene, when
    # there are scenes, narrows the ambience and the picture backgrounds to those of one place.
    scene_id, tint, brightness = -1, WHITE, 1.0
    background_pool, texture_pool = pools.backgrounds, pools.textures
    if pools.scenes:
        scene_id = int(nuisance_rng.integers(len(pools.scenes)))
        scene = pools.scenes[scene_id]
        background_pool, texture_pool = list(scene.backgrounds), list(scene.textures)
        tint, brightness = scene.tint, scene.brightness
    level_db = float(nuisance_rng.uniform(*params.level_db))
    background = _plan_background(params, background_pool, backgrounds, nuisance_rng)
    texture = int(nuisance_rng.choice(texture_pool))
    travel = pools.texture_side - params.size
    pan_x0, pan_y0, pan_x1, pan_y1 = (float(v) for v in nuisance_rng.uniform(0, travel, size=4))
    hue = nuisance_rng.uniform(0, 1)
    colour = _bright_colour(float(hue))

    # The distractor: one second of another class, in sound or in pictures, never both.
    distractor_sound, distractor_image = _distractor(
        label, image_label, params, pools, sounds, content_rng
    )
    sound_busy = (distractor_sound.onset, distractor_sound.offset) if distractor_sound else None

    # The class keeps sounding: an instance starts in a `density` share of the seconds.
    target_sounds: list[SoundEvent] = []
    free_from = 0.0
    for second in range(params.seconds):
        if content_rng.random() >= params.density:
            continue
        event = _place_sound(label, "target", second, free_from, params, pools, sounds, content_rng)
        if event is None:
            continue
        if (
            sound_busy
            and event.onset < sound_busy[1] + INSTANCE_GAP_S
            and (event.offset > sound_busy[0] - INSTANCE_GAP_S)
        ):
            continue
        target_sounds.append(event)
        free_from = event.offset + INSTANCE_GAP_S

    # Pictures: an image of the paired class held for a few seconds, then another one.
    holds: list[ImageHold] = []
    start = 0.0
    while start < params.seconds:
        length = int(content_rng.integers(params.hold_s[0], params.hold_s[1] + 1))
        end = min(start + length, float(params.seconds))
        holds.append(_hold(image_label, "target", start, end, params, pools, content_rng))
        start = end
    if params.sync_visibility:
        # The source is on screen only while it sounds: whole seconds, since ingestion sees one
        # frame per second. The holds were drawn first, so the content stream is unchanged.
        for second in silent_seconds(target_sounds, params.seconds):
            holds = _cut(holds, second, second + 1.0)
    if distractor_image is not None:
        holds = _cut(holds, distractor_image.onset, distractor_image.offset)
        holds.append(distractor_image)

    return ClipPlan(
        path=clip_path(split, index),
        split=split,
        label=label,
        image_label=image_label,
        seconds=params.seconds,
        level_db=level_db,
        texture=texture,
        pan=(pan_x0, pan_y0, pan_x1, pan_y1),
        colour=colour,
        background=background,
        sounds=tuple(
            sorted(target_sounds + ([distractor_sound] if distractor_sound else []), key=onset_of)
        ),
        images=tuple(sorted(holds, key=onset_of)),
        scene=scene_id,
        tint=tint,
        brightness=brightness,
    )


def silent_seconds(sounds: list[SoundEvent] | tuple[SoundEvent, ...], seconds: int) -> list[int]:
    """The whole seconds [s, s + 1) of a clip that no target instance overlaps."""
    targets = [e for e in sounds if e.kind == "target"]
    return [s for s in range(seconds) if not any(e.onset < s + 1 and e.offset > s for e in targets)]


def onset_of(event: SoundEvent | ImageHold) -> float:
    """Sort key: the onset of an event, in seconds."""
    return event.onset


def _distractor(
    label: str,
    image_label: str,
    params: BenchParams,
    pools: SplitPools,
    sounds: SoundBank,
    rng: np.random.Generator,
) -> tuple[SoundEvent | None, ImageHold | None]:
    """With probability `distractor_prob`, one event of another class: an instance of its sound
    (moved inside the clip when it would run past the end), or one second of its image."""
    if rng.random() >= params.distractor_prob:
        return None, None
    second = int(rng.integers(0, params.seconds))
    if rng.random() < 0.5:
        others = sorted(k for k in pools.sounds if k != label)
        if not others:
            return None, None
        other = others[int(rng.integers(len(others)))]
        event = _place_sound(
            other, "distractor", second, 0.0, params, pools, sounds, rng, pull_inside=True
        )
        return event, None
    others = sorted(k for k in pools.images if k != image_label)
    if not others:
        return None, None
    other = others[int(rng.integers(len(others)))]
    return None, _hold(other, "distractor", second, second + 1.0, params, pools, rng)


def _plan_background(
    params: BenchParams, pool: list[int], bank: SoundBank, rng: np.random.Generator
) -> tuple[BackgroundPiece, ...]:
    """Chain background recordings (random start, crossfaded) until they cover the clip."""
    rate = params.sample_rate
    total = params.seconds * rate
    fade = int(BACKGROUND_FADE_S * rate)
    pieces: list[BackgroundPiece] = []
    dst, previous = 0, -1
    while True:
        candidates = [b for b in pool if b != previous] or pool
        source = int(candidates[int(rng.integers(len(candidates)))])
        n = len(bank.audio(source))
        min_piece = min(n, int(BACKGROUND_MIN_PIECE_S * rate))
        src_start = int(rng.integers(0, n - min_piece + 1))
        length = min(n - src_start, total - dst)
        last = dst + length >= total
        fade_out = 0 if last else min(fade, length // 2)
        fade_in = pieces[-1].fade_out if pieces else 0
        pieces.append(BackgroundPiece(source, src_start, dst, length, fade_in, fade_out))
        if last:
            return tuple(pieces)
        dst += length - fade_out
        previous = source


def _place_sound(
    label: str,
    kind: str,
    second: int,
    free_from: float,
    params: BenchParams,
    pools: SplitPools,
    bank: SoundBank,
    rng: np.random.Generator,
    *,
    pull_inside: bool = False,
) -> SoundEvent | None:
    """An instance of `label` with its onset inside `second` and not before `free_from`; None when
    it would start past that second (the previous instance ran over) or end past the clip.
    `pull_inside` moves an instance that would end past the clip earlier instead, so that only a
    recording longer than the clip is refused."""
    candidates = pools.sounds[label]
    source = int(candidates[int(rng.integers(len(candidates)))])
    duration = bank.seconds(source)
    snr_db = float(rng.uniform(*params.snr_db))
    # Inside the second when it fits, so onsets spread evenly over the clip.
    onset = max(second + rng.uniform(0.0, max(0.0, 1.0 - duration)), free_from)
    length = len(bank.audio(source))
    onset_sample = int(np.ceil(onset * params.sample_rate))
    if pull_inside:
        onset_sample = max(0, min(onset_sample, params.seconds * params.sample_rate - length))
    end_sample = onset_sample + length
    if onset_sample >= (second + 1) * params.sample_rate:
        return None
    if end_sample > params.seconds * params.sample_rate:
        return None
    return SoundEvent(
        source=source,
        onset=onset_sample / params.sample_rate,
        offset=end_sample / params.sample_rate,
        snr_db=snr_db,
        label=label,
        kind=kind,
    )


def _hold(
    label: str,
    kind: str,
    onset: float,
    offset: float,
    params: BenchParams,
    pools: SplitPools,
    rng: np.random.Generator,
) -> ImageHold:
    candidates = pools.images[label]
    source = int(candidates[int(rng.integers(len(candidates)))])
    side = int(round(rng.uniform(*params.image_scale) * params.size))
    x, y = rng.uniform(0, params.size - side, size=2)
    vx, vy = rng.uniform(-DRIFT_PX_S, DRIFT_PX_S, size=2)
    return ImageHold(
        source=source,
        onset=float(onset),
        offset=float(offset),
        label=label,
        kind=kind,
        side=side,
        x=float(x),
        y=float(y),
        vx=float(vx),
        vy=float(vy),
    )


def _cut(holds: list[ImageHold], start: float, end: float) -> list[ImageHold]:
    """Remove [start, end) from the holds, splitting the one that spans it."""
    kept = []
    for hold in holds:
        if hold.offset <= start or hold.onset >= end:
            kept.append(hold)
            continue
        if hold.onset < start:
            kept.append(replace(hold, offset=start))
        if hold.offset > end:
            # The image stays where it drifted to, so the picture does not jump after the cut.
            moved = end - hold.onset
            kept.append(
                replace(hold, onset=end, x=hold.x + hold.vx * moved, y=hold.y + hold.vy * moved)
            )
    return kept


def _bright_colour(hue: float) -> tuple[int, int, int]:
    """A saturated, bright RGB colour for grayscale images (digits); its hue is a nuisance."""
    r, g, b = hsv_to_rgb(hue, 0.6, 1.0)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))
