"""The parameters of a benchmark, their defaults, and the checks a user's values must pass.

docs/benchmark.md explains each default; `bench.json` in every benchmark folder records them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from coincide.config.choices import SceneModel
from coincide.errors import UserError

# Sample rates that AAC in mp4 supports and that keep the 8 kHz band of 16 kHz ingestion.
AAC_RATES = (16000, 22050, 24000, 32000, 44100, 48000)


@dataclass(frozen=True)
class BenchParams:
    """How clips are composed. Times in seconds, levels in dB, sizes in pixels."""

    clips: int | None = None  # train clips; None = the preset's count
    test_clips: int | None = None  # None = the preset's count, else a third of `clips`
    val_clips: int | None = None  # None = the preset's count, else a fifth of `clips`
    seconds: int = 10
    seed: int = 0
    zipf: float = 1.0  # class prior p_k ~ 1 / rank^zipf; 0 = uniform
    density: float = 0.8  # share of seconds in which an instance of the class starts
    snr_db: tuple[float, float] = (0.0, 15.0)  # instance RMS over background RMS, per instance
    level_db: tuple[float, float] = (-40.0, -25.0)  # background RMS in dBFS, per clip
    distractor_prob: float = 0.25  # share of clips with one off-class second in one modality
    fps: int = 4
    size: int = 128  # frames are size x size
    sample_rate: int = 16000
    hold_s: tuple[int, int] = (2, 4)  # an image stays on screen this many whole seconds
    image_scale: tuple[float, float] = (0.45, 0.85)  # image's longer side / frame side
    textures: tuple[int, int, int] = (48, 16, 16)  # generated picture backgrounds: train, val, test
    # How what is heard and what is seen share a place besides the class (docs/benchmark.md):
    # "shared" draws a scene per clip that ties its ambience to its picture background family
    # and light; "independent" draws every nuisance of each modality on its own (the first one).
    scene: SceneModel = "shared"
    scenes: int = 8  # scenes per split ("shared")
    sync_visibility: bool = False  # show the class's image only in seconds in which it sounds
    tint: float = 0.35  # strength of a scene's coloured light, 0 = white
    brightness: tuple[float, float] = (0.6, 1.2)  # range of the scenes' light levels (gain)

    def check(self) -> None:
        """Raise UserError naming the first parameter that is out of range."""
        checks = [
            (self.clips is not None and self.clips >= 1, "--clips must be at least 1"),
            (self.test_clips is not None and self.test_clips >= 0, "--test-clips must be >= 0"),
            (self.val_clips is not None and self.val_clips >= 0, "--val-clips must be >= 0"),
            (self.seconds >= 1, "--seconds must be at least 1"),
            (self.zipf >= 0, "--zipf must be 0 (uniform) or more"),
            (0 < self.density <= 1, "--density must be in (0, 1]"),
            (
                self.snr_db[0] <= self.snr_db[1],
                "--snr-db must be given as LOW HIGH with LOW <= HIGH",
            ),
            (
                self.level_db[0] <= self.level_db[1] <= 0,
                "the background level range must be LOW <= HIGH <= 0 dBFS",
            ),
            (0 <= self.distractor_prob <= 1, "--distractor-prob must be in [0, 1]"),
            (self.fps >= 1, "--fps must be at least 1 (frames at 1 Hz or more)"),
            (self.size >= 16 and self.size % 2 == 0, "--size must be an even number >= 16"),
            (
                self.sample_rate in AAC_RATES,
                f"--sample-rate must be one of {', '.join(map(str, AAC_RATES))} Hz (AAC rates)",
            ),
            (1 <= self.hold_s[0] <= self.hold_s[1], "the hold range must be 1 <= LOW <= HIGH"),
            (
                0.1 <= self.image_scale[0] <= self.image_scale[1] <= 1,
                "the image scale range must be 0.1 <= LOW <= HIGH <= 1",
            ),
            (
                len(self.textures) == 3 and min(self.textures) >= 1,
                "each split (train, val, test) needs at least one generated texture",
            ),
            (self.scenes >= 1, "--scenes must be at least 1"),
            (0 <= self.tint <= 1, "the scene tint must be in [0, 1]"),
            (
                0 < self.brightness[0] <= self.brightness[1],
                "the scene brightness range must be 0 < LOW <= HIGH",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"{message}; change that option and run again")

    def as_dict(self) -> dict:
        """The parameters as JSON-ready values (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
