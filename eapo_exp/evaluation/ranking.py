"""Rank each sample's candidates with the LM and compute HR@k / NDCG@k.

Modes:
  score     all candidates ranked by log p(title + EOS | prompt) (shared-prefix forward),
            ties pessimistic (eapo_exp.evaluation.metrics.target_ranks).
  beam      beam search of width beam_width constrained to the candidate titles (the paper's
            protocol); the finished beams form the top-k list, a target outside it is a miss.
  generate  free greedy decoding matched to a candidate title after normalization. Reports
            hr@1 over ALL samples, an unmatched output counting as a miss (S-DPO's
            convention), hr@1_valid over matched outputs only (LLaRA's convention), and
            valid_ratio.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from eapo_exp.data.prompts import PromptBuilder, PromptExample
from eapo_exp.errors import ConfigError, DataError
from eapo_exp.evaluation.metrics import metrics_from_ranks, rank_in_list, target_ranks

MODES = ("score", "beam", "generate")
TOP_K = 5
HR1_CONVENTION = {
    "score": "all_samples",
    "beam": "all_samples",
    "generate": "all_samples (invalid output = miss, S-DPO); hr@1_valid: valid outputs only "
                "(LLaRA)",
}


def _batches(items: Sequence, size: int) -> Iterable[tuple[int, Sequence]]:
    for start in range(0, len(items), size):
        yield start, items[start:start + size]


def _pad_id(builder: PromptBuilder) -> int:
    pad = getattr(builder.tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else builder.eos_id


def _base_prediction(index: int, sample: dict, example: PromptExample, catalog) -> dict:
    return {
        "index": index,
        "user": sample.get("user"),
        "target": int(sample["target"]),
        "target_title": catalog.title(int(sample["target"])),
        "template": example.template,
        "dropped_history": example.dropped_history,
    }


def _ranked_fields(example: PromptExample, sample: dict, order: Sequence[int]) -> dict:
    cands = [int(i) for i in sample["candidates"]]
    top = list(order)[:TOP_K]
    return {
        "ranked_titles": [example.candidate_titles[k] for k in top],
        "ranked_items": [cands[k] for k in top],
    }


def _score_batch(model, examples, samples, pad_id, length_normalize):
    from eapo_exp.training.shared_prefix import completion_logprobs

    result = completion_logprobs(
        model, [e.prompt_ids for e in examples], [e.completion_ids for e in examples],
        pad_id, length_normalize=length_normalize,
    )
    scores = result.logprobs.float().cpu().numpy()
    targets = np.array([e.target_index for e in examples])
    ranks = target_ranks(scores, targets)
    out = []
    for b, (example, sample) in enumerate(zip(examples, samples)):
        k = len(example.completion_ids)
        row = scores[b, :k]
        order = np.argsort(-row, kind="stable")
        fields = _ranked_fields(example, sample, order)
        fields.update(target_rank=int(ranks[b]), scores=[round(float(s), 5) for s in row])
        out.append(fields)
    return out


def _beam_batch(model, examples, samples, pad_id, beam_width):
    from eapo_exp.evaluation.constrained_beam import constrained_beam_search, ranked_candidates

    hyps = constrained_beam_search(
        model, [e.prompt_ids for e in examples], [e.completion_ids for e in examples],
        pad_id, beam_width=beam_width,
    )
    out = []
    for example, sample, sample_hyps in zip(examples, samples, hyps):
        order = ranked_candidates(sample_hyps, example.target_index, limit=beam_width)
        fields = _ranked_fields(example, sample, order)
        fields.update(
            target_rank=rank_in_list(order, example.target_index),
            beam_scores=[round(h.score, 5) for h in sample_hyps],
        )
        out.append(fields)
    return out


def _generate_batch(model, tokenizer, examples, samples, pad_id, eos_id, max_new_tokens):
    from eapo_exp.evaluation.generate import greedy_generate, match_candidate, normalize_title

    longest = max(len(c) for e in examples for c in e.completion_ids)
    budget = max_new_tokens if max_new_tokens is not None else longest + 4
    generated = greedy_generate(model, [e.prompt_ids for e in examples], pad_id, eos_id, budget)
    out = []
    for example, sample, ids in zip(examples, samples, generated):
        text = tokenizer.decode(ids, skip_special_tokens=True)
        k = match_candidate(text, example.candidate_titles)
        target_title = example.candidate_titles[example.target_index]
        hit = k is not None and normalize_title(example.candidate_titles[k]) == normalize_title(
            target_title)
        order = [k] if k is not None else []
        fields = _ranked_fields(example, sample, order)
        fields.update(target_rank=1 if hit else 0, generated=text, valid=k is not None)
        out.append(fields)
    return out


def rank_candidates(
    model,
    builder: PromptBuilder,
    samples,
    catalog,
    mode: str = "score",
    batch_size: int = 8,
    length_normalize: bool = False,
    beam_width: int = 5,
    max_new_tokens: int | None = None,
    progress: bool = True,
    split: str = "test",
    runtime=None,
) -> tuple[dict, list[dict]]:
    """Evaluate `model` on `samples` (rows of the sample schema; a datasets.Dataset or list).

    Each sample's template is builder.template_for(row index, split). Returns the metrics
    dict (hr@1, hr@5, ndcg@5 for score/beam; hr@1, hr@1_valid, valid_ratio for generate;
    plus n, mode, hr@1_convention, timing and truncation counts, and chat_template: whether the
    prompts went through the tokenizer's chat template) and one prediction dict per
    sample (index, user, target, target_title, ranked_titles, ranked_items, target_rank,
    template, dropped_history; scores / beam_scores / generated+valid by mode).

    With several processes each ranks a contiguous shard of the samples (a sample's template
    depends on its global index only) and every process returns the gathered result.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown ranking mode {mode!r}; valid modes: {', '.join(MODES)}")
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
    bar = tqdm(total=len(shard), unit="sample", desc=f"eval[{mode}]",
               disable=not progress or not runtime.is_main)
    try:
        with torch.no_grad():
            for local_offset, chunk in _batches(rows[shard.start:shard.stop], batch_size):
                offset = shard.start + local_offset
                examples = []
                for i, sample in enumerate(chunk):
                    example = builder.build_sample(sample, catalog, split, offset + i)
                    if example.target_index is None:
                        raise DataError(
                            f"sample {offset + i}: target {sample['target']} is not among its "
                            "candidates")
                    examples.append(example)
                if mode == "score":
                    fields = _score_batch(model, examples, chunk, pad_id, length_normalize)
                elif mode == "beam":
                    fields = _beam_batch(model, examples, chunk, pad_id, beam_width)
                else:
                    fields = _generate_batch(model, builder.tokenizer, examples, chunk, pad_id,
                                             builder.eos_id, max_new_tokens)
                for i, (sample, example, extra) in enumerate(zip(chunk, examples, fields)):
                    pred = _base_prediction(offset + i, sample, example, catalog)
                    pred.update(extra)
                    predictions.append(pred)
                bar.update(len(chunk))
    finally:
        bar.close()
        if was_training:
            model.train()
    predictions = runtime.gather(predictions)
    truncated = runtime.total(builder.stats["truncated_examples"] - truncated_before)
    dropped = runtime.total(builder.stats["dropped_history_items"] - dropped_before)
    seconds = time.perf_counter() - start

    ranks = [p["target_rank"] for p in predictions]
    if mode == "generate":
        metrics = metrics_from_ranks(ranks, ks=(1,))
        valid = np.array([p["valid"] for p in predictions], dtype=bool)
        hits = np.array([r == 1 for r in ranks], dtype=bool)
        metrics["valid_ratio"] = float(valid.mean())
        metrics["hr@1_valid"] = float(hits[valid].mean()) if valid.any() else 0.0
        metrics["n_valid"] = int(valid.sum())
    else:
        metrics = metrics_from_ranks(ranks, ks=(1, TOP_K))
        metrics["valid_ratio"] = 1.0
    metrics.update(
        mode=mode,
        hr1_convention=HR1_CONVENTION[mode],
        seconds=round(seconds, 3),
        samples_per_s=round(len(rows) / seconds, 3) if seconds > 0 else float("inf"),
        truncated_prompts=int(truncated),
        dropped_history_items=int(dropped),
        chat_template=bool(getattr(builder, "uses_chat_template", False)),
    )
    if mode == "score":
        metrics["length_normalize"] = bool(length_normalize)
    if mode == "beam":
        metrics["beam_width"] = int(beam_width)
    return metrics, predictions
