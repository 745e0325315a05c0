"""β schedules: per-pair β [B, K] and the kept pairs for a batch (one BetaOutput), built by
Hydra ``_target_``.

FixedBeta (constant), BetaDPO (Wu et al. 2024, batch-level dynamic β with data filter),
ExpertBeta (EAPO eq. 8-9, from a frozen expert's scores). critical_point holds z_c and the
gradient factor G(β, Δr) of eq. 5.
"""

from __future__ import annotations

from eapo_exp.beta.base import BetaInputs, BetaOutput, BetaSchedule
from eapo_exp.beta.beta_dpo import BetaDPO
from eapo_exp.beta.critical_point import critical_beta, critical_z, gradient_factor
from eapo_exp.beta.expert import ExpertBeta, expert_betas
from eapo_exp.beta.fixed import FixedBeta

__all__ = [
    "BetaDPO", "BetaInputs", "BetaOutput", "BetaSchedule", "ExpertBeta", "FixedBeta",
    "critical_beta", "critical_z", "expert_betas", "gradient_factor",
]
