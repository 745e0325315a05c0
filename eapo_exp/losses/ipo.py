"""IPO (Azar et al. 2024) with a per-pair β: the paper's eq. 12 or IPO's own form."""

from __future__ import annotations

from torch import Tensor

from eapo_exp.errors import ConfigError
from eapo_exp.losses.base import PairwiseLoss, PreferenceLogps

FORMS = ("paper", "standard")


class IPOLoss(PairwiseLoss):
    """Squared distance of each pair's discrepancy Δ_j from IPO's target, averaged over a
    prompt's valid pairs, then over prompts.

    form="paper" (EAPO eq. 12, the default): (β_j Δ_j − 1/(2τ))².
    form="standard" (Azar et al.; TRL's ``loss_type="ipo"``): (Δ_j − 1/(2β_j))², the β
        schedule's β_j being IPO's regularisation τ; ``tau`` is not used.

    The two are related by (βΔ − 1/(2τ))² = β² · (Δ − 1/(2τβ))²: eq. 12 is β² times the
    standard IPO with regularisation τ' = τβ, whose target margin is 1/(2τβ). At τ = 0.1 and
    β = 0.1 that is 50 nats, ten times the standard form's 1/(2β) = 5 nats at the same β.

    length_normalize divides every log-prob (policy and reference) by its token count before
    forming Δ (the IPO paper's and TRL's practice); rewards are then per-token log-ratios too.
    """

    def __init__(self, tau: float = 0.1, length_normalize: bool = False,
                 form: str = "paper") -> None:
        super().__init__()
        if not tau > 0:
            raise ConfigError(f"IPO tau must be > 0, got {tau}")
        if form not in FORMS:
            raise ConfigError(f"IPO form (loss.form) must be one of {', '.join(FORMS)}; "
                              f"got {form!r}")
        self.tau = float(tau)
        self.length_normalize = bool(length_normalize)
        self.form = form

    def logratios(self, batch: PreferenceLogps) -> tuple[Tensor, Tensor]:
        return batch.logratios(reference_free=False, length_normalize=self.length_normalize)

    def pair_loss(self, beta: Tensor, delta: Tensor) -> Tensor:
        if self.form == "paper":
            return (beta * delta - 1.0 / (2.0 * self.tau)) ** 2
        return (delta - 1.0 / (2.0 * beta)) ** 2

    def extra_repr(self) -> str:
        return f"tau={self.tau}, length_normalize={self.length_normalize}, form={self.form!r}"
