"""Preference optimisation step: one shared-prompt forward over [chosen] + K rejected,
cached reference log-probs and expert scores, a β schedule and a preference loss.

The β schedule decides for all micro-batches of an optimizer step together, so β-DPO's
filter and batch statistics see the step's whole batch (batch_size × grad_accum prompts), as
in the β-DPO authors' trainer: when a step's first micro-batch runs, the step builds the
BetaInputs of every micro-batch this process runs in that step (for a schedule with
``needs_margins``, from a no-grad forward of each one in eval mode: one extra forward per
step) and keeps the schedule's BetaOutput; each micro-batch then takes its own rows. Fixed
and expert β depend on each pair alone, so for them this is the same as deciding per
micro-batch, and no extra forward runs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from eapo_exp.beta.base import BetaInputs, BetaSchedule
from eapo_exp.data.prompts import PromptBuilder
from eapo_exp.data.schema import ItemCatalog
from eapo_exp.distributed import Runtime, default_runtime
from eapo_exp.losses.base import PreferenceLogps, PreferenceLoss
from eapo_exp.training.batches import MicroBatchSchedule
from eapo_exp.training.loop import TrainLoop
from eapo_exp.training.preference_data import PreferenceExample, tokenize_example
from eapo_exp.training.settings import LoopSettings
from eapo_exp.training.shared_prefix import completion_logprobs

log = logging.getLogger(__name__)

# Log-probs enter the loss (and β its schedule) in float32 whatever the model computes in.
LOGP_DTYPE = torch.float32


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

    @property
    def num_rejected(self) -> int:
        return len(self.examples[0].rejected)

    def indices(self, step: int, micro: int) -> list[int]:
        return [pos for pos, _ in self.schedule.micro_batch(step * self.grad_accum + micro)]


@dataclass
class StepDecision:
    """The β schedule's decision for one optimizer step, split into its micro-batches."""

    step: int
    beta: dict[int, torch.Tensor]                 # micro-batch -> [b, K]
    keep: dict[int, torch.Tensor | None]          # micro-batch -> [b, K] bool, None = all
    flat_mean_over: float | None                  # see PreferenceLoss.forward


class PreferenceStep:
    """Computes the loss of one micro-batch; records per-pair beta and discrepancies.

    The β schedule decides for all of a step's micro-batches at once, when its first
    micro-batch runs (see the module docstring). Its state (the schedule's, and the records
    of every process so far) is saved with each checkpoint, so a resumed run keeps the whole
    run's records. `model` is the loop's prepared model (TrainLoop.model) and
    `micro_batches` the micro-batches this process runs in every step
    (TrainLoop.micro_batches).
    """

    def __init__(self, model, batches: PreferenceBatches, loss: PreferenceLoss,
                 schedule: BetaSchedule, pad_id: int, micro_batches: Sequence[int],
                 runtime: Runtime | None = None) -> None:
        self.model = model
        self.runtime = runtime or default_runtime()
        self.batches = batches
        self.loss = loss
        self.schedule = schedule
        self.pad_id = pad_id
        self.micro_batches = list(micro_batches)
        self.decision: StepDecision | None = None
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

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _logps(self, idx: list[int]) -> PreferenceLogps:
        b = self.batches
        prompts, completions = zip(*(b.tokens(i) for i in idx))
        device = self._device()
        out = completion_logprobs(self.model, list(prompts), list(completions), self.pad_id)
        policy = out.logprobs.to(LOGP_DTYPE)
        counts = out.counts.to(device)
        ref = (b.reference["logps"][idx].to(device) if b.reference is not None else None)
        return PreferenceLogps(
            policy_chosen=policy[:, 0], policy_rejected=policy[:, 1:],
            ref_chosen=ref[:, 0] if ref is not None else None,
            ref_rejected=ref[:, 1:] if ref is not None else None,
            chosen_lengths=counts[:, 0].float(), rejected_lengths=counts[:, 1:].float())

    @torch.no_grad()
    def _margins(self, idx: list[int]) -> torch.Tensor:
        """The loss's Δ [b, K] under the current policy, in eval mode (no dropout)."""
        was_training = self.model.training
        self.model.eval()
        try:
            return self.loss.discrepancy(self._logps(idx))
        finally:
            self.model.train(was_training)

    def _decide(self, step: int) -> StepDecision:
        b = self.batches
        rows = {micro: b.indices(step, micro) for micro in self.micro_batches}
        idx = [i for micro in self.micro_batches for i in rows[micro]]
        device = self._device()
        margins = (torch.cat([self._margins(rows[micro]) for micro in self.micro_batches])
                   if self.schedule.needs_margins else None)
        scores = b.expert_scores[idx].to(device) if b.expert_scores is not None else None
        out = self.schedule(BetaInputs(
            rejected_mask=torch.ones(len(idx), b.num_rejected, dtype=torch.bool, device=device),
            margins=margins, expert_chosen=scores[:, 0] if scores is not None else None,
            expert_rejected=scores[:, 1:] if scores is not None else None,
            logp_dtype=LOGP_DTYPE))
        flat_mean_over = None
        if out.flat_mean:  # every micro-batch's loss is over the step's kept pairs
            kept = int(out.keep.sum()) if out.keep is not None else out.beta.numel()
            flat_mean_over = max(kept, 1) / len(self.micro_batches)
        decision = StepDecision(step, {}, {}, flat_mean_over)
        start = 0
        for micro in self.micro_batches:
            stop = start + len(rows[micro])
            decision.beta[micro] = out.beta[start:stop]
            decision.keep[micro] = out.keep[start:stop] if out.keep is not None else None
            start = stop
        return decision

    def __call__(self, step: int, micro: int):
        if self.decision is None or self.decision.step != step:
            self.decision = self._decide(step)
        logps = self._logps(self.batches.indices(step, micro))
        keep = self.decision.keep[micro]
        if keep is not None:
            logps = dataclasses.replace(logps, rejected_mask=keep)
        result = self.loss(logps, self.decision.beta[micro],
                           flat_mean_over=self.decision.flat_mean_over)
        mask = result.rejected_mask
        order = step * self.batches.grad_accum + micro
        self.pair_betas.append((order, result.beta[mask].cpu()))
        self.pair_discrepancies.append((order, result.logratio_discrepancy[mask].cpu()))
        return result.loss, result.stats()


def _order(record: tuple[int, torch.Tensor]) -> int:
    return record[0]


def train_preference(model, batches: PreferenceBatches, loss: PreferenceLoss,
                     schedule: BetaSchedule, pad_id: int, settings: LoopSettings,
                     checkpoint_dir: Path, on_log: Callable | None = None,
                     progress: bool = True, runtime: Runtime | None = None,
                     probe: Callable | None = None,
                     probe_every: int = 0) -> tuple[dict, PreferenceStep]:
    """Train the LoRA-wrapped `model` in place; returns the loop statistics and the step
    (its per-pair records). probe(model, step) -> values (the held-out diagnostics) runs
    after the last step and every probe_every steps; its values are logged with the
    preference examples seen so far."""
    loop = TrainLoop(model, settings, checkpoint_dir, on_log=on_log, progress=progress,
                     description="preference", runtime=runtime)
    step = PreferenceStep(loop.model, batches, loss, schedule, pad_id, loop.micro_batches,
                          runtime)
    per_step = batches.schedule.batch_size * batches.grad_accum

    def measure(done: int) -> dict[str, float]:
        return {**probe(loop.model, done), "heldout/examples_seen": done * per_step}

    return loop.run(step, state=step, probe=measure if probe else None,
                    probe_every=probe_every), step
