"""Rank each sample's candidates with the LM and compute HR@k / NDCG@k.

How candidates are ranked and how the ranks are summarised is the mode's
(eapo_exp.evaluation.modes: score, beam, generate); this module does what every mode shares:
prompts, sharding over processes, prediction rows, timing and truncation counts.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import torch

from eapo_exp.data.prompts import PromptBuilder, PromptExample
from eapo_exp.errors import ConfigError, DataError
from eapo_exp.evaluation.modes import TOP_K, EvalMode, Ranking


def _batches(items: Sequence, size: int) -> Iterable[tuple[int, Sequence]]:
    for start in range(0, len(items), size):
        yield start, items[start:start + size]


def _pad_id(builder: PromptBuilder) -> int:
    pad = getattr(builder.tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else builder.eos_id


def _prediction(index: int, sample: dict, example: PromptExample, catalog,
                ranking: Ranking) -> dict:
    cands = [int(i) for i in sample["candidates"]]
    top = list(ranking.order)[:TOP_K]
    return {
        "index": index,
        "user": sample.get("user"),
        "target": int(sample["target"]),
        "target_title": catalog.title(int(sample["target"])),
        "template": example.template,
        "dropped_history": example.dropped_history,
        "ranked_titles": [example.candidate_titles[k] for k in top],
        "ranked_items": [cands[k] for k in top],
        "target_rank": ranking.target_rank,
        **ranking.fields,
    }


def _examples(builder: PromptBuilder, chunk: Sequence[dict], catalog, split: str,
              offset: int) -> list[PromptExample]:
    examples = []
    for i, sample in enumerate(chunk):
        example = builder.build_sample(sample, catalog, split, offset + i)
        if example.target_index is None:
            raise DataError(f"sample {offset + i}: target {sample['target']} is not among its "
                            "candidates")
        examples.append(example)
    return examples


def rank_candidates(
    model,
    builder: PromptBuilder,
    samples,
    catalog,
    mode: EvalMode,
    batch_size: int = 8,
    progress: bool = True,
    split: str = "test",
    runtime=None,
) -> tuple[dict, list[dict]]:
    """Evaluate `model` on `samples` (rows of the sample schema; a datasets.Dataset or list).

    Each sample's template is builder.template_for(row index, split). Returns the metrics
    dict (the mode's metrics, e.g. hr@1, hr@5, ndcg@5, n, valid_ratio; then mode,
    hr1_convention, timing, truncation counts, chat_template: whether the prompts went through
    the tokenizer's chat template, and the mode's settings) and one prediction dict per sample
    (index, user, target, target_title, template, dropped_history, ranked_titles,
    ranked_items, target_rank, and the mode's own fields).

    With several processes each ranks a contiguous shard of the samples (a sample's template
    depends on its global index only) and every process returns the gathered result.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    from tqdm.auto import tqdm

    from eapo_exp.distributed import default_runtime

    runtime = runtime or default_runtime()
    rows = [dict(s) for s in samples]
    if not rows:
        raise DataError("no samples to evaluate")
    shard = runtime.shard(len(rows))
    pad_id = _pad_id(builder)
    truncated_before = builder.stats["truncated_examples"]
    dropped_before = builder.stats["dropped_history_items"]
    was_training = model.training
    model.eval()
    predictions: list[dict] = []
    start = time.perf_counter()
    bar = tqdm(total=len(shard), unit="sample", desc=f"eval[{mode.name}]",
               disable=not progress or not runtime.is_main)
    try:
        with torch.no_grad():
            for local_offset, chunk in _batches(rows[shard.start:shard.stop], batch_size):
                offset = shard.start + local_offset
                examples = _examples(builder, chunk, catalog, split, offset)
                rankings = mode.rank_batch(model, builder, examples, pad_id)
                predictions.extend(
                    _prediction(offset + i, sample, example, catalog, ranking)
                    for i, (sample, example, ranking) in enumerate(zip(chunk, examples,
                                                                       rankings)))
                bar.update(len(chunk))
    finally:
        bar.close()
        if was_training:
            model.train()
    predictions = runtime.gather(predictions)
    truncated = runtime.total(builder.stats["truncated_examples"] - truncated_before)
    dropped = runtime.total(builder.stats["dropped_history_items"] - dropped_before)
    seconds = time.perf_counter() - start

    metrics = mode.metrics(predictions)
    metrics.update(
        mode=mode.name,
        hr1_convention=mode.hr1_convention,
        seconds=round(seconds, 3),
        samples_per_s=round(len(rows) / seconds, 3) if seconds > 0 else float("inf"),
        truncated_prompts=int(truncated),
        dropped_history_items=int(dropped),
        chat_template=bool(getattr(builder, "uses_chat_template", False)),
        **mode.settings(),
    )
    return metrics, predictions
