"""Preference pairs and the per-sample tensors cached before training.

For each training sample: chosen = the target, K rejected = K of its non-target
candidates drawn with a generator seeded by (seed, row index), so the same sample always
gets the same rejected items and caches stay valid. The prompt uses the sample's epoch-0
template, fixed for the whole preference stage (cached reference log-probs depend on it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from eapo_exp.data.prompts import PromptBuilder, PromptExample
from eapo_exp.data.schema import ItemCatalog
from eapo_exp.distributed import Runtime, default_runtime, gather_in_order
from eapo_exp.errors import ConfigError
from eapo_exp.training.shared_prefix import completion_logprobs

log = logging.getLogger(__name__)


@dataclass
class PreferenceExample:
    row: int  # index into its split
    sample: dict  # the sample (history, target, candidates, ...)
    rejected: list[int]
    # Training prompts use the sample's epoch-0 training template; another split (held-out
    # pairs) uses the evaluation template.
    split: str = "train"

    @property
    def chosen(self) -> int:
        return int(self.sample["target"])

    @property
    def items(self) -> list[int]:
        """[chosen] + rejected item ids, the order of every cached [N, K + 1] tensor."""
        return [self.chosen, *self.rejected]


def draw_rejected(candidates: list[int], target: int, k: int, seed: int, row: int) -> list[int]:
    negatives = [c for c in candidates if c != target]
    if k > len(negatives):
        raise ConfigError(f"train.preference.num_rejected={k} exceeds the {len(negatives)} "
                          "non-target candidates of a sample (dataset.num_negatives)")
    picks = np.random.default_rng([seed, row]).choice(len(negatives), size=k, replace=False)
    return [int(negatives[i]) for i in picks]


def make_examples(train_rows: list[dict], rows: list[int], k: int,
                  seed: int) -> list[PreferenceExample]:
    return [PreferenceExample(row=r, sample=x,
                              rejected=draw_rejected(list(x["candidates"]), int(x["target"]), k,
                                                     seed, r))
            for r, x in zip(rows, train_rows)]


def tokenize_example(builder: PromptBuilder, catalog: ItemCatalog,
                     example: PreferenceExample) -> tuple[list[int], list[list[int]]]:
    """Prompt ids (history + the sample's full candidate list, its split's epoch-0 template)
    and the completion ids of [chosen] + rejected, each title + EOS."""
    built: PromptExample = builder.build_sample(example.sample, catalog, example.split,
                                                sample_key=example.row, epoch=0)
    return built.prompt_ids, [builder.title_ids(catalog.title(i)) for i in example.items]


@torch.no_grad()
def compute_logps(model, builder: PromptBuilder, catalog: ItemCatalog,
                  examples: list[PreferenceExample], batch_size: int, pad_id: int,
                  description: str = "reference log-probs",
                  runtime: Runtime | None = None) -> dict[str, torch.Tensor]:
    """Summed log-probs [N, K + 1] and token counts of every example's completions; each
    process scores its shard of the examples and every process gets them all."""
    from tqdm.auto import tqdm

    runtime = runtime or default_runtime()
    shard = runtime.shard(len(examples))
    was_training = model.training
    model.eval()
    rows: list[tuple[int, tuple[torch.Tensor, torch.Tensor]]] = []
    for start in tqdm(range(shard.start, shard.stop, batch_size), desc=description,
                      unit="batch", disable=not runtime.is_main):
        stop = min(start + batch_size, shard.stop)
        chunk = [tokenize_example(builder, catalog, e) for e in examples[start:stop]]
        out = completion_logprobs(model, [p for p, _ in chunk], [c for _, c in chunk], pad_id)
        rows.append((start, (out.logprobs.float().cpu(), out.counts.cpu())))
    model.train(was_training)
    pieces = gather_in_order(runtime, rows)
    return {"logps": torch.cat([lp for lp, _ in pieces]),
            "counts": torch.cat([c for _, c in pieces])}
