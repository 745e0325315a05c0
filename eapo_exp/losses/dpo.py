"""DPO (paper eq. 1) with a per-pair β (EAPO eq. 10): −log σ(β_j (r̂_w − r̂_j))."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from eapo_exp.losses.base import PairwiseLoss


class DPOLoss(PairwiseLoss):
    """−log σ(β_j Δ_j), Δ_j = r̂_w − r̂_j, r̂ = log πθ − log πref; mean over a prompt's valid
    pairs, then over prompts. With K rejected this is K independent DPO pairs (the S-DPO
    paper's "DPO with multiple negatives" baseline); use SDPOLoss for the softmax form."""

    def pair_loss(self, beta: Tensor, delta: Tensor) -> Tensor:
        return -F.logsigmoid(beta * delta)
