"""Supervised fine-tuning (TALLRec-style): next-token loss on the response title only."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from eapo_exp.data.curriculum import HybridCurriculum
from eapo_exp.data.prompts import PromptBuilder
from eapo_exp.data.schema import ItemCatalog
from eapo_exp.losses.sft import IGNORE_INDEX, response_nll
from eapo_exp.training.batches import MicroBatchSchedule
from eapo_exp.training.loop import TrainLoop
from eapo_exp.training.settings import LoopSettings

log = logging.getLogger(__name__)


def pad_left(inputs: list[list[int]], labels: list[list[int]], pad_id: int,
             device) -> dict[str, torch.Tensor]:
    """Left-pad so every response ends in the last column: the LM head then only runs on the
    last `logits_to_keep` positions instead of the whole (mostly prompt) sequence."""
    width = max(len(x) for x in inputs)
    ids = torch.full((len(inputs), width), pad_id, dtype=torch.long)
    lab = torch.full((len(inputs), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(inputs), width), dtype=torch.long)
    for row, (x, y) in enumerate(zip(inputs, labels)):
        ids[row, width - len(x):] = torch.tensor(x)
        lab[row, width - len(y):] = torch.tensor(y)
        mask[row, width - len(x):] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    response = (lab != IGNORE_INDEX).sum(dim=1).max().item()
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
            "position_ids": positions.to(device), "labels": lab.to(device),
            # +1: the logit before the first response token predicts it.
            "logits_to_keep": int(response) + 1}


class SFTBatches:
    """Builds the tokenized micro-batches of an SFT run from training sample rows. With a
    curriculum (hybrid item prompts) each example is hybrid or text-only by its draw at the
    step's share of `total_steps`."""

    def __init__(self, rows: list[dict], catalog: ItemCatalog, builder: PromptBuilder,
                 batch_size: int, grad_accum: int, seed: int, pad_id: int,
                 curriculum: HybridCurriculum | None = None, total_steps: int = 0) -> None:
        self.rows = rows
        self.curriculum = curriculum
        self.total_steps = total_steps
        self.catalog = catalog
        self.builder = builder
        self.grad_accum = grad_accum
        self.pad_id = pad_id
        self.schedule = MicroBatchSchedule(len(rows), batch_size, seed)

    def batch(self, step: int, micro: int, device) -> dict[str, torch.Tensor]:
        inputs, labels = [], []
        for position, epoch in self.schedule.micro_batch(step * self.grad_accum + micro):
            hybrid = (None if self.curriculum is None else
                      self.curriculum.is_hybrid(step, self.total_steps, position, epoch))
            example = self.builder.build_sample(self.rows[position], self.catalog, "train",
                                                sample_key=position, epoch=epoch, hybrid=hybrid)
            inputs.append(example.prompt_ids + example.target_ids)
            labels.append([IGNORE_INDEX] * len(example.prompt_ids) + example.target_ids)
        return pad_left(inputs, labels, self.pad_id, device)


def train_sft(model, batches: SFTBatches, settings: LoopSettings, checkpoint_dir: Path,
              on_log: Callable | None = None, progress: bool = True, runtime=None) -> dict:
    """Train the LoRA-wrapped `model` in place; returns loop statistics."""
    loop = TrainLoop(model, settings, checkpoint_dir, on_log=on_log, progress=progress,
                     description="sft", runtime=runtime)
    device = loop.accelerator.device

    def step_loss(step: int, micro: int):
        batch = batches.batch(step, micro, device)
        keep = batch["logits_to_keep"]
        logits = loop.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            position_ids=batch["position_ids"], logits_to_keep=keep,
                            use_cache=False).logits
        # Logits stay in the model dtype: response_nll upcasts a block of rows at a time.
        loss = response_nll(logits, batch["labels"][:, -keep:])
        return loss, {"response_tokens": float((batch["labels"] != IGNORE_INDEX).sum())}

    return loop.run(step_loss)
