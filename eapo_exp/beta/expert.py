"""EAPO's expert-guided β (paper eq. 8-9).

w_j = S(y_w) − S(y_j) is the frozen expert's preference gap between the chosen item and
rejected item j. Within each prompt's rejected set, w is min-max normalized onto
[z_c/γ, U_β]:

    β_j = (w_j − min w) / (max w − min w) · (U_β − z_c/γ) + z_c/γ

so the rejected item the expert finds closest to the chosen (highest S(y_j), smallest w)
gets the smallest β (faster growth of its reward gap) and the clearest one the largest β
(conservative update). z_c ≈ 1.2785 solves e^z (z − 1) = 1 (critical_point.py).

γ is the level above which the paper observes the reward discrepancy to settle late in
training; the paper does not report its value. The default γ = 12.785 puts the lower bound
z_c/γ at ≈ 0.1, DPO's usual β, so EAPO's β range starts at the standard DPO setting and
U_β = 0.75 (paper C.4) is the top.

Degenerate prompts. When all valid rejected items of a prompt have the same w (always the
case at K = 1), eq. 9 is 0/0. We give every such item the MIDPOINT (U_β + z_c/γ)/2.
Reason: eq. 9 is a min-max rank normalization and is reflection-equivariant — replacing w
by −w maps β to U_β + z_c/γ − β. A tie carries no ordering information, so its value should
not depend on which end of the order we would have broken it towards; the only value
invariant under that reflection is the midpoint. (The lower bound would treat a lone pair
as "as hard as possible", the upper bound as "as easy as possible"; neither is supported by
a single gap.) Differences at or below float resolution (|max w − min w| <= eps · max(1,
|w|)) count as ties. With U_β = z_c/γ the midpoint equals the common constant, so EAPO then
reduces exactly to DPO with β = z_c/γ.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from eapo_exp.beta.base import BetaInputs, BetaOutput, BetaSchedule
from eapo_exp.beta.critical_point import critical_z
from eapo_exp.errors import ConfigError


def expert_betas(w: Tensor, mask: Tensor | None, lower: float, upper: float) -> Tensor:
    """Eq. 9 per prompt: min-max normalize w [B, K] over each row's valid entries onto
    [lower, upper]. Ties (including one valid entry) get (lower + upper)/2; masked entries
    get ``lower``. No range check here (tests call it with lower == upper)."""
    if w.dim() != 2:
        raise ValueError(f"w must be [B, K], got shape {tuple(w.shape)}")
    if mask is None:
        mask = torch.ones_like(w, dtype=torch.bool)
    if mask.shape != w.shape or mask.dtype != torch.bool:
        raise ValueError("mask must be a bool tensor with the shape of w")
    w = w.to(torch.promote_types(w.dtype, torch.float32))
    w_max = torch.where(mask, w, torch.full_like(w, float("-inf"))).amax(dim=1, keepdim=True)
    w_min = torch.where(mask, w, torch.full_like(w, float("inf"))).amin(dim=1, keepdim=True)
    span = w_max - w_min
    scale = torch.maximum(w_max.abs(), w_min.abs()).clamp(min=1.0)
    tie = ~(span > torch.finfo(w.dtype).eps * scale)         # also True for all-masked rows
    safe_span = torch.where(tie, torch.ones_like(span), span)
    safe_min = torch.where(tie, torch.zeros_like(w_min), w_min)
    beta = (torch.where(mask, w, torch.zeros_like(w)) - safe_min) / safe_span
    beta = beta * (upper - lower) + lower
    beta = torch.where(tie, torch.full_like(beta, (lower + upper) / 2.0), beta)
    beta = beta.clamp(min=min(lower, upper), max=max(lower, upper))  # rounding only
    return torch.where(mask, beta, torch.full_like(beta, lower))


class ExpertBeta(BetaSchedule):
    """EAPO β from the frozen expert's scores (eq. 8-9); see the module docstring."""

    needs_expert_scores = True

    def __init__(self, u_beta: float = 0.75, gamma: float = 12.785) -> None:
        self.u_beta = float(u_beta)
        self.gamma = float(gamma)
        self.validate()

    @property
    def lower(self) -> float:
        """z_c / γ, the smallest β."""
        return critical_z() / self.gamma

    def validate(self) -> None:
        if not (math.isfinite(self.gamma) and self.gamma > 0):
            raise ConfigError(f"expert beta: gamma must be a finite number > 0, got {self.gamma}")
        if not math.isfinite(self.u_beta):
            raise ConfigError(f"expert beta: u_beta must be finite, got {self.u_beta}")
        if self.lower >= self.u_beta:
            raise ConfigError(
                f"expert beta: the lower bound z_c/gamma = {critical_z():.4f}/{self.gamma:g} = "
                f"{self.lower:.4f} must be below u_beta = {self.u_beta:g}; raise u_beta or "
                f"gamma")

    def compute(self, batch: BetaInputs) -> BetaOutput:
        if batch.expert_chosen is None or batch.expert_rejected is None:
            raise ConfigError(
                "beta_schedule=expert needs the expert's scores of the chosen and rejected "
                "items (BetaInputs.expert_chosen / expert_rejected), but they are missing")
        s_w, s_l = batch.expert_chosen, batch.expert_rejected
        mask = batch.rejected_mask
        w = s_w.unsqueeze(1) - s_l                                       # eq. 8
        if not bool(torch.isfinite(w[mask]).all()):
            raise ValueError("expert scores are not finite on some valid rejected item")
        return BetaOutput(expert_betas(w, mask, self.lower, self.u_beta))  # eq. 9

    def hparams(self) -> dict[str, Any]:
        return {"u_beta": self.u_beta, "gamma": self.gamma}
