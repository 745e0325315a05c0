"""IPO (Azar et al. 2024) with a per-pair β, paper eq. 12: (β_j Δ_j − 1/(2τ))²."""

from __future__ import annotations

from torch import Tensor

from eapo_exp.errors import ConfigError
from eapo_exp.losses.base import PairwiseLoss, PreferenceLogps


class IPOLoss(PairwiseLoss):
    """(β_j Δ_j − 1/(2τ))² averaged over a prompt's valid pairs, then over prompts.

    length_normalize divides every log-prob (policy and reference) by its token count before
    forming Δ (the IPO paper's and TRL's practice); rewards are then per-token log-ratios too.
    """

    def __init__(self, tau: float = 0.1, length_normalize: bool = False) -> None:
        super().__init__()
        if not tau > 0:
            raise ConfigError(f"IPO tau must be > 0, got {tau}")
        self.tau = float(tau)
        self.length_normalize = bool(length_normalize)

    def logratios(self, batch: PreferenceLogps) -> tuple[Tensor, Tensor]:
        return batch.logratios(reference_free=False, length_normalize=self.length_normalize)

    def pair_loss(self, scaled_delta: Tensor) -> Tensor:
        return (scaled_delta - 1.0 / (2.0 * self.tau)) ** 2

    def extra_repr(self) -> str:
        return f"tau={self.tau}, length_normalize={self.length_normalize}"
