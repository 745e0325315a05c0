"""The shape every preference loss shares.

A batch holds B prompts; each has one chosen completion y_w and K rejected completions
y_1..y_K (K >= 1). A boolean ``rejected_mask [B, K]`` marks the real rejected entries when a
prompt has fewer than K (padding) or when a β schedule drops pairs (β-DPO). Log-probs are
SUMMED over the completion tokens.

Every loss turns the log-probs into log-ratios r̂ = log πθ − log πref (or log πθ for a
reference-free loss), forms the per-pair discrepancy Δ_j = r̂_w − r̂_j, scales it by the
per-pair β_j it is given, and reduces: first over the valid pairs of a prompt, then over the
prompts that have at least one valid pair, or, when the β schedule asks for it (β-DPO), as a
flat mean over the valid pairs. Which β is used (fixed, β-DPO, expert) is not the loss's
business: any loss × any β schedule is valid (docs/beta_schedules.md).

Reward statistics follow the TRL convention (rewards = β · log-ratio, detached). With a
per-pair β the chosen completion has one reward per pair; ``chosen_rewards [B]`` reports it
with the prompt's mean β over its valid pairs, and ``margins [B, K]`` is the exact per-pair
quantity β_j · Δ_j that enters the loss (equal to chosen − rejected whenever β is constant
within a prompt).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn


@dataclass
class PreferenceLogps:
    """Summed completion log-probs for a batch of B prompts with K rejected each.

    policy_chosen [B], policy_rejected [B, K]: log πθ, differentiable.
    ref_chosen [B], ref_rejected [B, K]: log πref, or None for reference-free losses (CPO).
    chosen_lengths [B], rejected_lengths [B, K]: completion token counts; needed by CPO (the
        per-token NLL) and by IPO with length_normalize.
    rejected_mask [B, K] bool: True where the rejected entry is real; None means all True.
    Values at masked entries are never used (they may be padding garbage, even NaN).
    """

    policy_chosen: Tensor
    policy_rejected: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    chosen_lengths: Tensor | None = None
    rejected_lengths: Tensor | None = None
    rejected_mask: Tensor | None = None

    def __post_init__(self) -> None:
        if self.policy_rejected.dim() != 2:
            raise ValueError(
                f"policy_rejected must be [B, K], got shape {tuple(self.policy_rejected.shape)}")
        b, k = self.policy_rejected.shape
        if k < 1:
            raise ValueError("need at least one rejected completion per prompt (K >= 1)")
        for name, shape in (("policy_chosen", (b,)), ("ref_chosen", (b,)),
                            ("ref_rejected", (b, k)), ("chosen_lengths", (b,)),
                            ("rejected_lengths", (b, k)), ("rejected_mask", (b, k))):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}")
        if (self.ref_chosen is None) != (self.ref_rejected is None):
            raise ValueError("give both ref_chosen and ref_rejected, or neither")
        if self.rejected_mask is not None and self.rejected_mask.dtype != torch.bool:
            raise ValueError(f"rejected_mask must be bool, got {self.rejected_mask.dtype}")

    @property
    def batch_size(self) -> int:
        return self.policy_rejected.shape[0]

    @property
    def num_rejected(self) -> int:
        return self.policy_rejected.shape[1]

    @property
    def has_reference(self) -> bool:
        return self.ref_chosen is not None

    def mask(self) -> Tensor:
        """bool [B, K]: the rejected_mask, or all True."""
        if self.rejected_mask is not None:
            return self.rejected_mask
        return torch.ones_like(self.policy_rejected, dtype=torch.bool)

    def logratios(self, *, reference_free: bool = False,
                  length_normalize: bool = False) -> tuple[Tensor, Tensor]:
        """(r̂_w [B], r̂_j [B, K]) with r̂ = log πθ − log πref (or log πθ when reference_free).

        With length_normalize every log-prob (policy and reference) is divided by its token
        count first. Masked entries are set to 0 so no NaN/inf from padding leaks through.
        """
        chosen, rejected = self.policy_chosen, self.policy_rejected
        if not reference_free and not self.has_reference:
            raise ValueError("this loss needs reference log-probs (ref_chosen/ref_rejected)")
        if length_normalize:
            if self.chosen_lengths is None or self.rejected_lengths is None:
                raise ValueError("length normalization needs chosen_lengths and rejected_lengths")
            cl = self.chosen_lengths.to(chosen.dtype).clamp(min=1)
            rl = self.rejected_lengths.to(rejected.dtype).clamp(min=1)
        if reference_free:
            r_w, r_l = chosen, rejected
            if length_normalize:
                r_w, r_l = r_w / cl, r_l / rl
        else:
            ref_w, ref_l = self.ref_chosen, self.ref_rejected
            if length_normalize:
                chosen, rejected, ref_w, ref_l = chosen / cl, rejected / rl, ref_w / cl, ref_l / rl
            r_w, r_l = chosen - ref_w, rejected - ref_l
        r_l = torch.where(self.mask(), r_l, torch.zeros_like(r_l))
        return r_w, r_l


@dataclass
class LossOutput:
    """What a loss returns. Everything but ``loss`` and ``per_prompt_loss`` is detached.

    loss: scalar, the batch's loss (PreferenceLoss.forward names its two reductions).
    per_prompt_loss [B]: the prompt's loss (0 for a prompt with no valid pair).
    chosen_rewards [B]: mean_j(β_j) · r̂_w over the prompt's valid pairs.
    rejected_rewards [B, K]: β_j · r̂_j.
    margins [B, K]: β_j · (r̂_w − r̂_j), the quantity inside the loss.
    logratio_discrepancy [B, K]: Δr̂_j = r̂_w − r̂_j without β (the paper's reward discrepancy).
    beta [B, K], rejected_mask [B, K] bool, policy_chosen_logps [B], policy_rejected_logps
    [B, K]: the inputs, for statistics.
    Masked entries of the [B, K] tensors hold 0; always read them through rejected_mask.
    """

    loss: Tensor
    per_prompt_loss: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    margins: Tensor
    logratio_discrepancy: Tensor
    beta: Tensor
    rejected_mask: Tensor
    policy_chosen_logps: Tensor
    policy_rejected_logps: Tensor

    def stats(self) -> dict[str, float]:
        """TRL-named batch statistics as Python floats (NaN when nothing is valid).

        Pair statistics average over valid pairs; prompt statistics over prompts with at
        least one valid pair.
        """
        mask = self.rejected_mask
        prompts = mask.any(dim=1)

        def pair_mean(x: Tensor) -> float:
            return _float(x[mask].double().mean()) if mask.any() else float("nan")

        def prompt_mean(x: Tensor) -> float:
            return _float(x[prompts].double().mean()) if prompts.any() else float("nan")

        betas = self.beta[mask]
        return {
            "rewards/chosen": prompt_mean(self.chosen_rewards),
            "rewards/rejected": pair_mean(self.rejected_rewards),
            "rewards/margins": pair_mean(self.margins),
            "rewards/accuracies": pair_mean(self.margins > 0),
            "logps/chosen": prompt_mean(self.policy_chosen_logps),
            "logps/rejected": pair_mean(self.policy_rejected_logps),
            "beta/mean": _float(betas.double().mean()) if betas.numel() else float("nan"),
            "beta/min": _float(betas.min()) if betas.numel() else float("nan"),
            "beta/max": _float(betas.max()) if betas.numel() else float("nan"),
        }


def _float(x: Tensor) -> float:
    return float(x.detach().double().cpu().item())


class PreferenceLoss(nn.Module, abc.ABC):
    """Base class: ``forward(batch, beta [B, K]) -> LossOutput``.

    Subclasses set ``reference_free`` (no πref needed) and implement ``per_prompt_loss``.
    A scalar or any tensor broadcastable to [B, K] is accepted as beta.
    """

    reference_free: ClassVar[bool] = False

    def logratios(self, batch: PreferenceLogps) -> tuple[Tensor, Tensor]:
        """(r̂_w [B], r̂_j [B, K]) as this loss defines them; masked entries are 0."""
        return batch.logratios(reference_free=self.reference_free)

    @abc.abstractmethod
    def per_prompt_loss(self, beta: Tensor, r_chosen: Tensor, r_rejected: Tensor,
                        mask: Tensor, batch: PreferenceLogps) -> Tensor:
        """The loss of each prompt [B]. Inputs: beta [B, K], r̂_w [B], r̂_j [B, K] (0 where
        masked), mask [B, K] bool. Rows with no valid pair may return anything finite."""

    def discrepancy(self, batch: PreferenceLogps) -> Tensor:
        """Δ_j = r̂_w − r̂_j [B, K] as this loss defines r̂, without β; 0 where masked."""
        r_w, r_l = self.logratios(batch)
        return torch.where(batch.mask(), r_w.unsqueeze(1) - r_l, torch.zeros_like(r_l))

    def forward(self, batch: PreferenceLogps, beta: Tensor | float, *,
                flat_mean_over: float | None = None) -> LossOutput:
        """The batch's loss with per-pair β (a scalar or anything broadcastable to [B, K]).

        flat_mean_over None: the mean, over the prompts with a valid pair, of each prompt's
        loss. A number N: Σ_b n_b·ℓ_b / N, n_b the prompt's valid pairs; for a pairwise loss
        that is the sum of the valid pairs' losses over N, so with N the number of valid
        pairs it is the flat mean over pairs (β-DPO's reduction; S-DPO's softmax term then
        counts once per pair it holds).
        """
        if flat_mean_over is not None and not flat_mean_over > 0:
            raise ValueError(f"flat_mean_over must be > 0, got {flat_mean_over}")
        b, k = batch.batch_size, batch.num_rejected
        # β in at least the log-probs' precision (a float32 β against float64 log-probs would
        # compute IPO's 1/(2β) in float32); a Python number is made in that dtype directly.
        dtype = batch.policy_rejected.dtype
        if isinstance(beta, Tensor) and beta.is_floating_point():
            dtype = torch.promote_types(beta.dtype, dtype)
        beta = torch.as_tensor(beta, dtype=dtype, device=batch.policy_rejected.device)
        try:
            beta = torch.broadcast_to(beta, (b, k))
        except RuntimeError as exc:
            raise ValueError(f"beta of shape {tuple(beta.shape)} does not broadcast to "
                             f"[B, K] = [{b}, {k}]") from exc
        mask = batch.mask()
        r_w, r_l = self.logratios(batch)
        per_prompt = self.per_prompt_loss(beta, r_w, r_l, mask, batch)
        has_pair = mask.any(dim=1)
        per_prompt = torch.where(has_pair, per_prompt, torch.zeros_like(per_prompt))
        if flat_mean_over is None:
            loss = per_prompt.sum() / has_pair.sum().clamp(min=1).to(per_prompt.dtype)
        else:
            loss = (per_prompt * mask.sum(dim=1).to(per_prompt.dtype)).sum() / flat_mean_over
        return self._output(loss, per_prompt, beta, r_w, r_l, mask, batch)

    @staticmethod
    def _output(loss: Tensor, per_prompt: Tensor, beta: Tensor, r_w: Tensor, r_l: Tensor,
                mask: Tensor, batch: PreferenceLogps) -> LossOutput:
        with torch.no_grad():
            beta = beta.detach()
            zero = torch.zeros_like(r_l)
            beta_valid = torch.where(mask, beta, zero)
            count = mask.sum(dim=1).clamp(min=1).to(beta.dtype)
            mean_beta = beta_valid.sum(dim=1) / count
            delta = torch.where(mask, r_w.detach().unsqueeze(1) - r_l.detach(), zero)
            policy_rejected = torch.where(mask, batch.policy_rejected.detach(), zero)
            return LossOutput(
                loss=loss,
                per_prompt_loss=per_prompt,
                chosen_rewards=mean_beta * r_w.detach(),
                rejected_rewards=torch.where(mask, beta * r_l.detach(), zero),
                margins=torch.where(mask, beta * delta, zero),
                logratio_discrepancy=delta,
                beta=beta_valid,
                rejected_mask=mask,
                policy_chosen_logps=batch.policy_chosen.detach(),
                policy_rejected_logps=policy_rejected,
            )


class PairwiseLoss(PreferenceLoss):
    """A loss of each pair's β_j and Δ_j, averaged over a prompt's valid pairs, plus an
    optional per-prompt term (``prompt_term``, e.g. CPO's NLL)."""

    @abc.abstractmethod
    def pair_loss(self, beta: Tensor, delta: Tensor) -> Tensor:
        """Elementwise loss of each pair, [B, K] β and Δ -> [B, K]."""

    def prompt_term(self, batch: PreferenceLogps) -> Tensor | None:
        """An extra per-prompt loss [B] added to the pair mean; None for none."""
        return None

    def per_prompt_loss(self, beta: Tensor, r_chosen: Tensor, r_rejected: Tensor,
                        mask: Tensor, batch: PreferenceLogps) -> Tensor:
        pair = self.pair_loss(beta, r_chosen.unsqueeze(1) - r_rejected)
        pair = torch.where(mask, pair, torch.zeros_like(pair))
        per_prompt = pair.sum(dim=1) / mask.sum(dim=1).clamp(min=1).to(pair.dtype)
        extra = self.prompt_term(batch)
        return per_prompt if extra is None else per_prompt + extra
