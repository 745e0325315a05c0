"""Preference optimisation step: one shared-prompt forward over [chosen] + K rejected,
cached reference log-probs and expert scores, a beta schedule and a preference loss."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from eapo_exp.beta.base import BetaInputs, BetaSchedule
from eapo_exp.data.prompts import PromptBuilder
from eapo_exp.data.schema import ItemCatalog
from eapo_exp.distributed import Runtime, default_runtime
from eapo_exp.losses.base import PreferenceLogps, PreferenceLoss
from eapo_exp.training.batches import MicroBatchSchedule
from eapo_exp.training.loop import LoopSettings, TrainLoop
from eapo_exp.training.preference_data import PreferenceExample, tokenize_example
from eapo_exp.training.shared_prefix import completion_logprobs

log = logging.getLogger(__name__)


class PreferenceBatches:
    """Micro-batches of preference examples with their cached reference and expert tensors."""

    def __init__(self, examples: list[PreferenceExample], builder: PromptBuilder,
                 catalog: ItemCatalog, reference: dict[str, torch.Tensor] | None,
                 expert_scores: torch.Tensor | None, batch_size: int, grad_accum: int,
                 seed: int) -> None:
        self.examples = examples
        self.builder = builder
        self.catalog = catalog
        self.reference = reference
        self.expert_scores = expert_scores
        self.grad_accum = grad_accum
        self.schedule = MicroBatchSchedule(len(examples), batch_size, seed)
        self._tokens: dict[int, tuple[list[int], list[list[int]]]] = {}

    def tokens(self, index: int) -> tuple[list[int], list[list[int]]]:
        if index not in self._tokens:
            self._tokens[index] = tokenize_example(self.builder, self.catalog,
                                                   self.examples[index])
        return self._tokens[index]

    def indices(self, step: int, micro: int) -> list[int]:
        return [pos for pos, _ in self.schedule.micro_batch(step * self.grad_accum + micro)]


class PreferenceStep:
    """Computes the loss of one micro-batch; records per-pair beta and discrepancies.

    Its state (the schedule's, and the records of every process so far) is saved with each
    checkpoint, so a resumed run keeps the whole run's records."""

    def __init__(self, model, batches: PreferenceBatches, loss: PreferenceLoss,
                 schedule: BetaSchedule, pad_id: int, runtime: Runtime | None = None) -> None:
        self.model = model
        self.runtime = runtime or default_runtime()
        self.batches = batches
        self.loss = loss
        self.schedule = schedule
        self.pad_id = pad_id
        # (global micro-batch index, tensor): processes' records merge in training order.
        self.pair_betas: list[tuple[int, torch.Tensor]] = []
        self.pair_discrepancies: list[tuple[int, torch.Tensor]] = []

    def state_dict(self) -> dict:
        """Collective under several processes: the main one gets every process's records."""
        return {"schedule": self.schedule.state_dict(),
                "pair_betas": sorted(self.runtime.gather(self.pair_betas), key=_order),
                "pair_discrepancies": sorted(self.runtime.gather(self.pair_discrepancies),
                                             key=_order)}

    def load_state_dict(self, state: dict) -> None:
        self.schedule.load_state_dict(state["schedule"])
        # The merged records live on the main process only (they are gathered again at the end).
        keep = self.runtime.is_main
        self.pair_betas = list(state["pair_betas"]) if keep else []
        self.pair_discrepancies = list(state["pair_discrepancies"]) if keep else []

    def __call__(self, step: int, micro: int):
        b = self.batches
        idx = b.indices(step, micro)
        prompts, completions = zip(*(b.tokens(i) for i in idx))
        device = next(self.model.parameters()).device
        out = completion_logprobs(self.model, list(prompts), list(completions), self.pad_id)
        policy = out.logprobs.float()
        counts = out.counts.to(device)
        ref = (b.reference["logps"][idx].to(device) if b.reference is not None else None)
        logps = PreferenceLogps(
            policy_chosen=policy[:, 0], policy_rejected=policy[:, 1:],
            ref_chosen=ref[:, 0] if ref is not None else None,
            ref_rejected=ref[:, 1:] if ref is not None else None,
            chosen_lengths=counts[:, 0].float(), rejected_lengths=counts[:, 1:].float())
        scores = b.expert_scores[idx].to(device) if b.expert_scores is not None else None
        beta = self.schedule(BetaInputs(
            logps=logps, expert_chosen=scores[:, 0] if scores is not None else None,
            expert_rejected=scores[:, 1:] if scores is not None else None))
        result = self.loss(self.schedule.restrict(logps), beta)
        mask = result.rejected_mask
        order = step * b.grad_accum + micro
        self.pair_betas.append((order, result.beta[mask].cpu()))
        self.pair_discrepancies.append((order, result.logratio_discrepancy[mask].cpu()))
        return result.loss, result.stats()


def _order(record: tuple[int, torch.Tensor]) -> int:
    return record[0]


def train_preference(model, step: PreferenceStep, settings: LoopSettings, checkpoint_dir: Path,
                     on_log: Callable | None = None, progress: bool = True,
                     runtime=None) -> dict:
    loop = TrainLoop(model, settings, checkpoint_dir, on_log=on_log, progress=progress,
                     extra_state=step, description="preference", runtime=runtime)
    step.model = loop.model
    return loop.run(step)
