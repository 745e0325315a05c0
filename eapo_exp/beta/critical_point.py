"""The critical point of the gradient factor (paper eq. 5-7, appendix A.2-A.3).

G(β, Δr) = β / (1 + e^{βΔr}) is the factor that scales the DPO gradient (eq. 3, 5).
∂G/∂β = (1 + e^{z}(1 − z)) / (1 + e^{z})² with z = βΔr (eq. 6), which vanishes at the unique
root z_c of e^z (z − 1) = 1 (≈ 1.2785). So for a given Δr, G grows with β below
β_c = z_c/Δr and shrinks above it; EAPO keeps every β above z_c/γ ≥ β_c once Δr > γ.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor


@functools.cache
def critical_z(tol: float = 1e-12) -> float:
    """The root z_c of f(z) = e^z (z − 1) − 1, by Newton's method from z = 2.

    f is increasing and convex on z > 0 (f' = z e^z, f'' = (z + 1) e^z) and f(1) = −1 < 0 <
    f(2), so Newton from the right of the root converges monotonically; the loop stops when
    a step is below ``tol``.
    """
    z = 2.0
    for _ in range(100):
        step = (math.exp(z) * (z - 1.0) - 1.0) / (z * math.exp(z))
        z -= step
        if abs(step) < tol:
            return z
    raise RuntimeError("Newton iteration for z_c did not converge")  # pragma: no cover


def critical_beta(delta: float | Tensor) -> float | Tensor:
    """β_c = z_c / Δr: below it G increases with β, above it G decreases (Δr > 0)."""
    return critical_z() / delta


def gradient_factor(beta: float | Tensor, delta: float | Tensor) -> float | Tensor:
    """G(β, Δr) = β / (1 + e^{βΔr}) (eq. 5), computed stably as β · σ(−βΔr).

    The DPO loss −log σ(βΔr) has derivative −G(β, Δr) with respect to Δr.
    """
    if isinstance(beta, Tensor) or isinstance(delta, Tensor):
        beta_t = torch.as_tensor(beta)
        return beta_t * torch.sigmoid(-beta_t * torch.as_tensor(delta))
    z = beta * delta
    if z >= 0:
        e = math.exp(-z)
        return beta * e / (1.0 + e)
    return beta / (1.0 + math.exp(z))
