"""The optimisation loop shared by SFT and preference training.

It owns what both need and nothing stage-specific: AdamW over the trainable (LoRA)
parameters, warmup + cosine or constant LR, gradient accumulation, clipping, a NaN/inf
guard, periodic resumable checkpoints, and a metric history. The stage supplies
`step_loss(step, micro_index) -> (loss, stats)` for each micro-batch.

Under `accelerate launch` with N processes, the grad_accum micro-batches of a step are split
into N equal contiguous blocks, one per process; each process scales its loss by 1/(its
micro-batch count) and DDP averages the gradients, so a step equals the one-process step
over the same global batch. Logged statistics are averaged over processes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from eapo_exp.distributed import Runtime, default_runtime
from eapo_exp.errors import EapoError
from eapo_exp.training.checkpoint import (
    latest_checkpoint,
    load_adapter_weights,
    load_rng_state,
    load_trainer_state,
    save_checkpoint,
    set_rng_state,
)
from eapo_exp.training.settings import LoopSettings, check_split

log = logging.getLogger(__name__)


class TrainingDiverged(EapoError):
    """The loss or gradient became NaN or infinite, or the gradient vanished for several
    steps; the last good checkpoint is kept."""


def local_micro_batches(grad_accum: int, num_processes: int, process_index: int) -> range:
    """The micro-batch indices (of 0..grad_accum-1) that one process runs in every step."""
    check_split("grad_accum", grad_accum, num_processes)
    per_process = grad_accum // num_processes
    return range(process_index * per_process, (process_index + 1) * per_process)


StepLoss = Callable[[int, int], tuple[torch.Tensor, dict[str, float]]]


class TrainLoop:
    def __init__(self, model, settings: LoopSettings, checkpoint_dir: Path,
                 on_log: Callable[[int, dict[str, Any]], None] | None = None,
                 runtime: Runtime | None = None, progress: bool = True,
                 description: str = "train") -> None:
        """Prepares the model (DDP under several processes) and the optimizer: a step
        function is built with `self.model`, the prepared one. A checkpoint in
        checkpoint_dir is resumed when `run` starts."""
        if settings.total_steps < 1:
            raise EapoError(f"training needs at least one step, got {settings.total_steps}")
        self.model = model
        self.settings = settings
        self.checkpoint_dir = Path(checkpoint_dir)
        self.on_log = on_log
        self.state: Any = None
        self.runtime = runtime or default_runtime()
        self.accelerator = self.runtime.accelerator
        self.micro_batches = local_micro_batches(settings.grad_accum,
                                                 self.accelerator.num_processes,
                                                 self.accelerator.process_index)
        self.progress = progress
        self.description = description
        # What the run logged and its last step's stats: saved with every checkpoint, so a
        # resumed run reports the whole run, not only what it trained itself.
        self.history: list[dict[str, Any]] = []
        self.last_stats: dict[str, float] = {}
        self.dead_steps = 0
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise EapoError("the model has no trainable parameters (is the LoRA adapter on?)")
        self.optimizer = torch.optim.AdamW(params, lr=settings.lr,
                                           weight_decay=settings.weight_decay)
        warmup = math.ceil(settings.warmup_ratio * settings.total_steps)
        if settings.schedule == "cosine":
            scheduler = get_cosine_schedule_with_warmup(self.optimizer, warmup,
                                                        settings.total_steps)
        elif settings.schedule == "constant":
            scheduler = get_constant_schedule_with_warmup(self.optimizer, warmup)
        else:
            raise EapoError(f"unknown LR schedule {settings.schedule!r}; use cosine or constant")
        # The scheduler stays unprepared: accelerate would step it once per process.
        self.model, self.optimizer = self.accelerator.prepare(model, self.optimizer)
        self.scheduler = scheduler
        self.start_step = 0

    def _resume(self) -> int:
        checkpoint = latest_checkpoint(self.checkpoint_dir)
        if checkpoint is None:
            # Seeded here, not by whatever ran before in this process.
            torch.manual_seed(self.settings.seed + self.accelerator.process_index)
            return 0
        acc = self.accelerator
        state = load_trainer_state(checkpoint, self.runtime.device)
        load_adapter_weights(acc.unwrap_model(self.model), checkpoint)
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(load_rng_state(checkpoint, acc.process_index))
        if self.state is not None and state["extra"].get("extra") is not None:
            self.state.load_state_dict(state["extra"]["extra"])
        self.history = list(state["extra"].get("history", []))
        self.last_stats = dict(state["extra"].get("last_stats", {}))
        self.dead_steps = int(state["extra"].get("dead_steps", 0))
        if self.on_log is not None:  # this job's log gets the steps trained before the resume
            for row in self.history:
                self.on_log(row["step"], {k: v for k, v in row.items() if k != "step"})
        log.info("resumed %s from %s (step %d)", self.description, checkpoint, state["step"])
        return int(state["step"])

    def _checkpoint(self, step: int) -> None:
        acc = self.accelerator
        extra = {"extra": self.state.state_dict() if self.state is not None else None,
                 "history": self.history, "last_stats": self.last_stats,
                 "dead_steps": self.dead_steps}
        save_checkpoint(self.checkpoint_dir, step, acc.unwrap_model(self.model), self.optimizer,
                        self.scheduler, extra, process_index=acc.process_index,
                        num_processes=acc.num_processes, barrier=acc.wait_for_everyone)

    def _accumulate(self, step: int, step_loss: StepLoss) -> dict[str, float]:
        """Forward/backward of this process's micro-batches; stats averaged over all of them.
        Gradients are synchronised once, after the last micro-batch."""
        acc = self.accelerator
        local = self.micro_batches
        sums: dict[str, float] = {}
        bad_micro = -1
        for position, micro in enumerate(local):
            loss, stats = step_loss(step, micro)
            if not torch.isfinite(loss) and bad_micro < 0:
                bad_micro = micro
            sync = position == len(local) - 1
            with contextlib.nullcontext() if sync else acc.no_sync(self.model):
                acc.backward(loss / len(local))
            for key, value in {"loss": loss.item(), **stats}.items():
                sums[key] = sums.get(key, 0.0) + float(value) / len(local)
        # Every process must stop together, or the others would wait in the next collective.
        if self.runtime.total(float(bad_micro >= 0)) > 0:
            where = f"micro-batch {bad_micro}" if bad_micro >= 0 else "on another process"
            raise TrainingDiverged(
                f"{self.description}: the loss is not finite at step {step + 1} ({where}); "
                "last good checkpoint kept in "
                f"{latest_checkpoint(self.checkpoint_dir) or self.checkpoint_dir}")
        return self.runtime.mean(sums)

    def run(self, step_loss: StepLoss, state: Any = None,
            probe: Callable[[int], dict[str, float]] | None = None,
            probe_every: int = 0) -> dict[str, Any]:
        """Train from the latest checkpoint (or from scratch) to total_steps. state: an object
        with state_dict()/load_state_dict() saved with every checkpoint (the preference
        step: the β schedule's running statistics and the per-pair records), or None.
        probe(step): values measured on the model after the last step and every probe_every
        steps (> 0), logged in that step's row (a collective call under several processes)."""
        from tqdm.auto import tqdm

        self.state = state
        self.start_step = self._resume()
        s = self.settings
        acc = self.accelerator
        self.model.train()
        started = time.perf_counter()
        bar = tqdm(total=s.total_steps, initial=self.start_step, desc=self.description,
                   disable=not self.progress or not acc.is_main_process, unit="step")
        for step in range(self.start_step, s.total_steps):
            sums = self._accumulate(step, step_loss)
            # max_grad_norm <= 0: no clipping, but the norm is still measured for the guard.
            limit = s.max_grad_norm if s.max_grad_norm > 0 else float("inf")
            sums["grad_norm"] = float(acc.clip_grad_norm_(self.model.parameters(), limit))
            self._guard_gradient(step, sums)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            done = step + 1
            sums["lr"] = self.scheduler.get_last_lr()[0]
            self.last_stats = sums
            bar.update(1)
            bar.set_postfix(loss=f"{sums['loss']:.4f}")
            probed = probe is not None and (done == s.total_steps
                                            or (probe_every > 0 and done % probe_every == 0))
            if probed:
                sums.update(probe(done))
            if done % s.log_every == 0 or done == s.total_steps or probed:
                self.history.append({"step": done, **sums})
                if self.on_log is not None:
                    self.on_log(done, sums)
            if done % s.checkpoint_every == 0 or done == s.total_steps:
                self._checkpoint(done)
        bar.close()
        self.model.eval()
        return {"steps": s.total_steps, "resumed_from_step": self.start_step,
                "train_seconds": round(time.perf_counter() - started, 2),
                "final": self.last_stats}

    def _guard_gradient(self, step: int, stats: dict[str, float]) -> None:
        """Stop on a non-finite gradient, or on one that stayed exactly 0 (the norm is the
        same on every process, so they all stop together)."""
        grad_norm = stats["grad_norm"]
        where = (f"last good checkpoint kept in "
                 f"{latest_checkpoint(self.checkpoint_dir) or self.checkpoint_dir}")
        if not math.isfinite(grad_norm):
            raise TrainingDiverged(f"{self.description}: the gradient norm is {grad_norm} at "
                                   f"step {step + 1}; {where}")
        self.dead_steps = self.dead_steps + 1 if grad_norm == 0.0 else 0
        limit = self.settings.dead_gradient_steps
        if limit > 0 and self.dead_steps >= limit:
            raise TrainingDiverged(
                f"{self.description}: no gradient for {self.dead_steps} steps in a row (steps "
                f"{step + 2 - self.dead_steps}-{step + 1}; the loss is {stats['loss']:.4g}"
                f"): the model has diverged (learning rate too high?); {where}")
