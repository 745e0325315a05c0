"""Preference losses (paper eq. 1, 10, 12 and C.5): nn.Modules built by Hydra ``_target_``
that take summed completion log-probs and a per-pair β [B, K] and return a LossOutput."""

from __future__ import annotations

from eapo_exp.losses.base import LossOutput, PairwiseLoss, PreferenceLogps, PreferenceLoss
from eapo_exp.losses.cpo import CPOLoss
from eapo_exp.losses.dpo import DPOLoss
from eapo_exp.losses.ipo import IPOLoss
from eapo_exp.losses.sdpo import SDPOLoss
from eapo_exp.losses.sft import IGNORE_INDEX, response_nll

__all__ = [
    "IGNORE_INDEX", "CPOLoss", "DPOLoss", "IPOLoss", "LossOutput", "PairwiseLoss",
    "PreferenceLogps", "PreferenceLoss", "SDPOLoss", "response_nll",
]
