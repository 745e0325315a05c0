"""A constant β for every pair (standard DPO / S-DPO / IPO / CPO)."""

from __future__ import annotations

import math
from typing import Any

import torch

from eapo_exp.beta.base import BetaInputs, BetaOutput, BetaSchedule
from eapo_exp.errors import ConfigError


class FixedBeta(BetaSchedule):
    """β_j = beta for every pair."""

    def __init__(self, beta: float = 0.1) -> None:
        self.beta = float(beta)
        self.validate()

    def validate(self) -> None:
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ConfigError(f"beta must be a finite number > 0, got {self.beta}")

    def compute(self, batch: BetaInputs) -> BetaOutput:
        return BetaOutput(torch.full(batch.shape, self.beta, dtype=batch.float_dtype(),
                                     device=batch.device))

    def hparams(self) -> dict[str, Any]:
        return {"beta": self.beta}
