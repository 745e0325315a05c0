"""The shape every β schedule shares: a batch in, a detached per-pair β [B, K] out."""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from eapo_exp.losses.base import PreferenceLogps


@dataclass
class BetaInputs:
    """What a schedule may look at for one batch of B prompts with K rejected each.

    logps: the policy/reference log-probs (β-DPO reads its margins from them); may be None
        for schedules that do not need them when another field gives the shape.
    expert_chosen [B], expert_rejected [B, K]: the frozen expert's scores S(y), or None.
    rejected_mask [B, K] bool: valid rejected entries; None falls back to
        logps.rejected_mask, then to all True.
    """

    logps: PreferenceLogps | None = None
    expert_chosen: Tensor | None = None
    expert_rejected: Tensor | None = None
    rejected_mask: Tensor | None = None

    def _reference(self) -> Tensor:
        for tensor in (self.expert_rejected, self.rejected_mask,
                       None if self.logps is None else self.logps.policy_rejected):
            if tensor is not None:
                return tensor
        raise ValueError("BetaInputs needs logps, expert_rejected or rejected_mask "
                         "to know the batch shape [B, K]")

    @property
    def shape(self) -> tuple[int, int]:
        b, k = self._reference().shape
        return int(b), int(k)

    @property
    def device(self) -> torch.device:
        return self._reference().device

    def float_dtype(self) -> torch.dtype:
        """At least float32: β is never computed in half precision."""
        ref = self._reference()
        dtype = ref.dtype if ref.is_floating_point() else torch.float32
        return torch.promote_types(dtype, torch.float32)

    def mask(self) -> Tensor:
        """bool [B, K] of valid rejected entries."""
        if self.rejected_mask is not None:
            mask = self.rejected_mask
        elif self.logps is not None and self.logps.rejected_mask is not None:
            mask = self.logps.rejected_mask
        else:
            return torch.ones(self.shape, dtype=torch.bool, device=self.device)
        if mask.dtype != torch.bool:
            raise ValueError(f"rejected_mask must be bool, got {mask.dtype}")
        if tuple(mask.shape) != self.shape:
            raise ValueError(f"rejected_mask shape {tuple(mask.shape)} != [B, K] {self.shape}")
        return mask


class BetaSchedule(abc.ABC):
    """Base class. ``schedule(BetaInputs) -> Tensor[B, K]`` (detached, on the inputs' device).

    Subclasses implement ``compute``; stateful ones override ``state_dict`` /
    ``load_state_dict``. ``validate`` raises ConfigError on bad hyperparameters and is run by
    the constructor. ``needs_expert_scores`` tells the trainer to provide expert scores.

    A schedule may also drop pairs: after a call, ``last_pair_weight`` is None (every valid
    pair kept) or a float [B, K] with 1 for kept pairs and 0 for dropped or masked ones;
    ``restrict(logps)`` applies it to a batch's rejected_mask for the loss. Like nn.Module,
    a schedule has ``train()`` / ``eval()``: in eval mode a stateful schedule neither updates
    its state nor drops pairs.
    """

    needs_expert_scores: ClassVar[bool] = False

    def __init__(self) -> None:
        self.training = True
        self.last_pair_weight: Tensor | None = None

    def validate(self) -> None:
        """Raise eapo_exp.errors.ConfigError if a hyperparameter is out of range."""

    @abc.abstractmethod
    def compute(self, batch: BetaInputs) -> Tensor:
        """β [B, K] for the batch."""

    def __call__(self, batch: BetaInputs) -> Tensor:
        with torch.no_grad():
            beta = self.compute(batch)
        return beta.detach()

    def restrict(self, logps: PreferenceLogps) -> PreferenceLogps:
        """logps with rejected_mask limited to the pairs the last call kept."""
        if self.last_pair_weight is None:
            return logps
        keep = self.last_pair_weight > 0
        mask = keep if logps.rejected_mask is None else logps.rejected_mask & keep
        return dataclasses.replace(logps, rejected_mask=mask)

    def train(self, mode: bool = True) -> BetaSchedule:
        self.training = bool(mode)
        return self

    def eval(self) -> BetaSchedule:
        return self.train(False)

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
