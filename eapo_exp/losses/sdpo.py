"""S-DPO (Chen et al. 2024): one softmax over a prompt's K rejected completions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from eapo_exp.losses.base import PreferenceLogps, PreferenceLoss


class SDPOLoss(PreferenceLoss):
    """Per prompt: softplus(logsumexp_j β_j (r̂_j − r̂_w)) = −log σ(−logsumexp_j(−β_j Δ_j)),
    over the prompt's valid rejected entries (masked entries are −inf inside the logsumexp).
    Entries a β schedule drops (β-DPO's filter) are masked too, so they leave the softmax.

    Computed as −logsigmoid(−lse) so that at K = 1 it is bit-for-bit DPOLoss.
    """

    def per_prompt_loss(self, beta: Tensor, r_chosen: Tensor, r_rejected: Tensor,
                        mask: Tensor, batch: PreferenceLogps) -> Tensor:
        delta = r_chosen.unsqueeze(1) - r_rejected
        neg = -(beta * delta)                                  # β_j (r̂_j − r̂_w)
        # Rows with no valid entry get finite zeros, so neither value nor gradient is NaN.
        has_pair = mask.any(dim=1, keepdim=True)
        fill = torch.where(has_pair, torch.full_like(neg, float("-inf")), torch.zeros_like(neg))
        lse = torch.logsumexp(torch.where(mask, neg, fill), dim=1)
        return -F.logsigmoid(-lse)
