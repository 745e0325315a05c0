"""The shape every β schedule shares: BetaInputs in, one BetaOutput (β and keep-mask) out."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor


@dataclass(frozen=True)
class BetaInputs:
    """What a schedule may read for one batch of B prompts with K rejected each.

    rejected_mask [B, K] bool: the valid rejected entries; it sets the shape and device.
    margins [B, K]: the loss's own unscaled discrepancy Δ_j = r̂_w − r̂_j of every pair
        (detached), as the loss defines r̂ (reference-free for CPO, per-token for
        length-normalised IPO); given to schedules with ``needs_margins``, else None.
    expert_chosen [B], expert_rejected [B, K]: the frozen expert's scores S(y); given to
        schedules with ``needs_expert_scores``, else None.
    """

    rejected_mask: Tensor
    margins: Tensor | None = None
    expert_chosen: Tensor | None = None
    expert_rejected: Tensor | None = None
    # The loss's log-prob dtype: β is computed in at least its precision.
    logp_dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        mask = self.rejected_mask
        if mask.dtype != torch.bool or mask.dim() != 2:
            raise ValueError(f"rejected_mask must be a bool [B, K] tensor, got {mask.dtype} "
                             f"{tuple(mask.shape)}")
        b, k = mask.shape
        for name, shape in (("margins", (b, k)), ("expert_chosen", (b,)),
                            ("expert_rejected", (b, k))):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}")

    @property
    def shape(self) -> tuple[int, int]:
        b, k = self.rejected_mask.shape
        return int(b), int(k)

    @property
    def device(self) -> torch.device:
        return self.rejected_mask.device

    def float_dtype(self) -> torch.dtype:
        """The inputs' float dtype, at least float32: β is never computed in half precision."""
        dtype = torch.promote_types(torch.float32, self.logp_dtype)
        for value in (self.margins, self.expert_rejected):
            if value is not None and value.is_floating_point():
                dtype = torch.promote_types(dtype, value.dtype)
        return dtype


@dataclass(frozen=True)
class BetaOutput:
    """A schedule's decision for one batch, read by the trainer and the loss.

    beta [B, K]: the detached per-pair β.
    keep [B, K] bool: the pairs the loss uses (dropped pairs and padding are False), or
        None when every valid pair is used.
    flat_mean: the loss is the flat mean over the kept pairs of the whole batch the
        schedule saw (β-DPO's reduction); False: the mean over prompts of each prompt's
        mean over its pairs.
    """

    beta: Tensor
    keep: Tensor | None = None
    flat_mean: bool = False


class BetaSchedule(abc.ABC):
    """Base class. ``schedule(BetaInputs) -> BetaOutput`` (detached, on the inputs' device).

    Subclasses implement ``compute``; stateful ones override ``state_dict`` /
    ``load_state_dict``. ``validate`` raises ConfigError on bad hyperparameters and is run by
    the constructor. The class flags tell the trainer what to put into BetaInputs:
    ``needs_expert_scores`` (the frozen expert's scores) and ``needs_margins`` (the policy's
    current margins, which costs the trainer one extra no-grad forward per step).
    """

    needs_expert_scores: ClassVar[bool] = False
    needs_margins: ClassVar[bool] = False

    def validate(self) -> None:
        """Raise eapo_exp.errors.ConfigError if a hyperparameter is out of range."""

    @abc.abstractmethod
    def compute(self, batch: BetaInputs) -> BetaOutput:
        """β (and the kept pairs) for the batch."""

    def __call__(self, batch: BetaInputs) -> BetaOutput:
        with torch.no_grad():
            out = self.compute(batch)
        if tuple(out.beta.shape) != batch.shape:
            raise ValueError(f"{type(self).__name__} returned β of shape "
                             f"{tuple(out.beta.shape)} for a batch of shape {batch.shape}")
        keep = None if out.keep is None else out.keep & batch.rejected_mask
        return BetaOutput(out.beta.detach(), keep, out.flat_mean)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())
        return f"{type(self).__name__}({args})"

    def hparams(self) -> dict[str, Any]:
        """Constructor arguments, for repr and logging."""
        return {}
