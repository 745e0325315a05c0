"""β-DPO (Wu et al. 2024, "β-DPO: Direct Preference Optimization with Dynamic β").

Per optimizer batch (all ``grad_accum`` micro-batches of one step, as the authors' trainer
sees its whole batch; the trainer gets every micro-batch's margins from a no-grad forward
before any backward, eapo_exp.training.preference):

1. M_i = Δ_i, the loss's own unscaled discrepancy r̂_w − r̂_l, for every valid pair i (pairs
   of all prompts flattened; N of them). With DPO r̂ = log πθ − log πref; what M is with
   S-DPO, CPO and length-normalised IPO is in docs/beta_schedules.md.
2. Running statistics, momentum m = 0.9, both starting at 0:
   M0 ← m·M0 + (1 − m)·mean(M),  σ ← m·σ + (1 − m)·std(M)  (std unbiased; 0 when N = 1).
   First batch: we keep the zero start with no bias correction, as the authors' code does
   (junkangwu/beta-DPO, trainers.py), so after it M0 = 0.1·mean(M) and σ = 0.1·std(M); the
   statistics are updated BEFORE they are used, also as there. Consequence: for the first
   ~20 steps σ underestimates the spread by the factor 1 − 0.9^t, so the filter is sharper
   (nearly "keep the pairs closest to M0") than it is later.
3. Data filter: keep n = max(1, ⌊(1 − ρ)N⌋) pairs sampled WITHOUT replacement with
   probability ∝ exp(−½((M_i − M0)/σ)²), using a seeded torch.Generator whose state is part
   of ``state_dict`` (so resume is exact). Sampling is Gumbel-top-n on the log-weights, which
   is exactly sequential sampling without replacement ∝ weight and cannot underflow. If
   σ <= 1e-8 (e.g. the very first batch, where πθ = πref makes every M_i = 0) the weights
   carry no information and the sample is uniform. n is at least 1 so that a batch with a
   single pair still trains (⌊0.8⌋ would keep nothing).
4. β = β0·[1 + α·(mean(M_kept) − M0)], clamped at >= 1e-3, the same for every pair.
5. The loss is the flat mean over the n kept pairs (``BetaOutput.flat_mean``), not a mean
   over prompts of per-prompt means (the two agree at K = 1).

Deviations from the authors' code: there M comes from the same forward that gives the loss;
here from a separate no-grad forward in eval mode (no dropout) over the step's micro-batches,
so the filter and β are fixed before gradient accumulation starts (one extra forward per
step). The authors also update the statistics on evaluation batches, and ``int((1 − ρ)N)``
there can keep zero pairs; here β is computed for training batches only and n >= 1. The
original all-gathers M under data parallelism; here a job with β-DPO is refused on more than
one process (eapo_exp.stages.preference_stage.validate_preference).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from eapo_exp.beta.base import BetaInputs, BetaOutput, BetaSchedule
from eapo_exp.errors import ConfigError

BETA_MIN = 1e-3
SIGMA_EPS = 1e-8


def keep_count(num_pairs: int, rho: float) -> int:
    """max(1, ⌊(1 − ρ)N⌋) for N >= 1 (a tiny epsilon guards float error like 0.7·10)."""
    if num_pairs <= 0:
        return 0
    return max(1, math.floor((1.0 - rho) * num_pairs + 1e-9))


class BetaDPO(BetaSchedule):
    """Batch-level dynamic β with a Gaussian-weighted data filter; see the module docstring."""

    needs_margins = True

    def __init__(self, beta0: float = 0.1, rho: float = 0.2, alpha: float = 0.6,
                 momentum: float = 0.9, seed: int = 0) -> None:
        self.beta0 = float(beta0)
        self.rho = float(rho)
        self.alpha = float(alpha)
        self.momentum = float(momentum)
        self.seed = int(seed)
        self.validate()
        self.m0 = 0.0
        self.sigma = 0.0
        self.step = 0
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(self.seed)

    def validate(self) -> None:
        if not (math.isfinite(self.beta0) and self.beta0 > 0):
            raise ConfigError(f"beta_dpo: beta0 must be a finite number > 0, got {self.beta0}")
        if not 0.0 <= self.rho < 1.0:
            raise ConfigError(f"beta_dpo: rho (fraction of pairs dropped) must be in [0, 1), "
                              f"got {self.rho}")
        if not math.isfinite(self.alpha):
            raise ConfigError(f"beta_dpo: alpha must be finite, got {self.alpha}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"beta_dpo: momentum must be in [0, 1), got {self.momentum}")

    def compute(self, batch: BetaInputs) -> BetaOutput:
        if batch.margins is None:
            raise ValueError("beta_dpo needs the pairs' margins (BetaInputs.margins)")
        mask = batch.rejected_mask
        shape, device, dtype = batch.shape, batch.device, batch.float_dtype()
        m_cpu = batch.margins.detach().double()[mask].cpu()         # [N], row-major order
        n = m_cpu.numel()
        keep = torch.zeros(shape, dtype=torch.bool)
        if n == 0:
            return BetaOutput(torch.full(shape, self.beta0, dtype=dtype, device=device),
                              keep.to(device), flat_mean=True)

        batch_mean = float(m_cpu.mean())
        batch_std = float(m_cpu.std()) if n > 1 else 0.0
        mom = self.momentum
        self.m0 = mom * self.m0 + (1.0 - mom) * batch_mean
        self.sigma = mom * self.sigma + (1.0 - mom) * batch_std
        self.step += 1

        n_keep = keep_count(n, self.rho)
        if self.sigma > SIGMA_EPS:
            log_w = -0.5 * ((m_cpu - self.m0) / self.sigma) ** 2
        else:
            log_w = torch.zeros_like(m_cpu)
        u = torch.rand(n, generator=self.generator, dtype=torch.float64)
        gumbel = -torch.log(-torch.log(u.clamp(min=1e-300, max=1.0 - 1e-16)))
        kept = torch.topk(log_w + gumbel, n_keep).indices
        keep_flat = torch.zeros(n, dtype=torch.bool)
        keep_flat[kept] = True
        keep[mask.cpu()] = keep_flat
        beta = torch.full(shape, self._beta(float(m_cpu[kept].mean())), dtype=dtype,
                          device=device)
        return BetaOutput(beta, keep.to(device), flat_mean=True)

    def _beta(self, kept_mean: float) -> float:
        return max(BETA_MIN, self.beta0 * (1.0 + self.alpha * (kept_mean - self.m0)))

    def state_dict(self) -> dict[str, Any]:
        return {"m0": self.m0, "sigma": self.sigma, "step": self.step,
                "generator": self.generator.get_state().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"m0", "sigma", "step", "generator"} - set(state)
        if missing:
            raise ValueError(f"beta_dpo state is missing {sorted(missing)}")
        self.m0 = float(state["m0"])
        self.sigma = float(state["sigma"])
        self.step = int(state["step"])
        self.generator.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8).cpu())

    def hparams(self) -> dict[str, Any]:
        return {"beta0": self.beta0, "rho": self.rho, "alpha": self.alpha,
                "momentum": self.momentum, "seed": self.seed}
