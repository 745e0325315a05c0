"""LLaRA's curriculum for hybrid item prompts: SFT starts on text-only prompts and moves to
hybrid ones (titles followed by embedding slots) as training goes on."""

from __future__ import annotations

import numpy as np

from eapo_exp.errors import ConfigError


class HybridCurriculum:
    """The share of hybrid prompts rises linearly from `start_share` at the first step to 1 at
    `ramp_fraction` of the run, and stays 1 after. Whether one example is hybrid is a seeded
    draw in (seed, sample_key, epoch) compared with the share, so it never depends on
    iteration order or on the processes the run is split over."""

    def __init__(self, start_share: float = 0.0, ramp_fraction: float = 1.0,
                 seed: int = 0) -> None:
        if not 0.0 <= start_share <= 1.0:
            raise ConfigError(f"prompt.curriculum.start_share must be in [0, 1], got {start_share}")
        if not 0.0 <= ramp_fraction <= 1.0:
            raise ConfigError(f"prompt.curriculum.ramp_fraction must be in [0, 1], "
                              f"got {ramp_fraction}")
        self.start_share = float(start_share)
        self.ramp_fraction = float(ramp_fraction)
        self.seed = int(seed)

    def share(self, step: int, total_steps: int) -> float:
        """Share of hybrid prompts at optimizer step `step` (0-based) of `total_steps`."""
        ramp_steps = self.ramp_fraction * max(total_steps, 1)
        if ramp_steps <= 0:
            return 1.0
        progress = min(1.0, step / ramp_steps)
        return self.start_share + (1.0 - self.start_share) * progress

    def is_hybrid(self, step: int, total_steps: int, sample_key: int, epoch: int) -> bool:
        draw = np.random.default_rng([self.seed, int(sample_key), int(epoch)]).random()
        return bool(draw < self.share(step, total_steps))
