"""Display names of methods: a loss x beta-schedule pair, or an SFT/zero-shot baseline."""

from __future__ import annotations

LOSS_NAMES = {"dpo": "DPO", "sdpo": "S-DPO", "ipo": "IPO", "cpo": "CPO"}


def method_name(loss: str, beta_schedule: str) -> str:
    """DPO, β-DPO, EAPO, S-DPO, EA-SDPO, IPO, EA-IPO, CPO, EA-CPO, ..."""
    base = LOSS_NAMES.get(loss, loss.upper())
    if beta_schedule == "fixed":
        return base
    if beta_schedule == "expert":
        return "EAPO" if loss == "dpo" else f"EA-{base.replace('-', '')}"
    if beta_schedule == "beta_dpo":
        return "β-DPO" if loss == "dpo" else f"β-{base}"
    return f"{base}+{beta_schedule}"


def method_label(loss: str, beta_schedule: str) -> str:
    """File-name-safe label: dpo, beta_dpo, eapo, sdpo, ea_sdpo, ..."""
    if beta_schedule == "fixed":
        return loss
    if beta_schedule == "expert":
        return "eapo" if loss == "dpo" else f"ea_{loss}"
    if beta_schedule == "beta_dpo":
        return "beta_dpo" if loss == "dpo" else f"beta_{loss}"
    return f"{loss}_{beta_schedule}"
