"""The "until convergence" rule of a curriculum stage (paper 3.4: "minimizing L_AV until
convergence"): a plateau of the held-out coincidence loss."""

from __future__ import annotations

import math
from typing import Any

from coincide.config.settings import PlateauConfig


class Plateau:
    """Tracks the held-out loss of one stage and says when the stage has converged.

    A measurement improves when it is below best - rel_eps * |best|; `patience` measurements in
    a row without improvement, at or after `min_steps` stage steps, end the stage.
    patience = 0 never ends it (the step cap does). The first measurement of a stage is its
    starting value (taken before the first step), so a stage that has not moved from where it
    started counts misses from the start, and still runs at least `min_steps`.
    """

    def __init__(self, cfg: PlateauConfig) -> None:
        self.cfg = cfg
        self.best = math.inf
        self.misses = 0

    def update(self, value: float, stage_step: int) -> bool:
        """Record a held-out loss measured after `stage_step` steps; True when converged."""
        if value < self.best - self.cfg.rel_eps * abs(self.best) or math.isinf(self.best):
            self.best = value
            self.misses = 0
        else:
            self.misses += 1
        return (
            self.cfg.patience > 0
            and self.misses >= self.cfg.patience
            and stage_step >= self.cfg.min_steps
        )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "misses": self.misses}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.misses = int(state["misses"])
