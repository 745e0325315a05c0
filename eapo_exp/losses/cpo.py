"""CPO (Xu et al. 2024): reference-free preference term plus NLL on the chosen."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from eapo_exp.errors import ConfigError
from eapo_exp.losses.base import PairwiseLoss, PreferenceLogps


class CPOLoss(PairwiseLoss):
    """−log σ(β_j (log πθ(y_w) − log πθ(y_j))) averaged over a prompt's valid pairs,
    + α · NLL(y_w) with NLL the per-token mean −log πθ(y_w) / |y_w|.

    Needs no reference (ref_* may be None; they are ignored if given) but needs
    chosen_lengths. Rewards follow TRL's CPO: β · log πθ.
    """

    reference_free = True

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        if not alpha >= 0:
            raise ConfigError(f"CPO alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)

    def pair_loss(self, beta: Tensor, delta: Tensor) -> Tensor:
        return -F.logsigmoid(beta * delta)

    def prompt_term(self, batch: PreferenceLogps) -> Tensor | None:
        if self.alpha == 0:
            return None
        if batch.chosen_lengths is None:
            raise ValueError("CPOLoss needs chosen_lengths for the per-token NLL term")
        lengths = batch.chosen_lengths.to(batch.policy_chosen.dtype).clamp(min=1)
        return self.alpha * (-batch.policy_chosen / lengths)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
