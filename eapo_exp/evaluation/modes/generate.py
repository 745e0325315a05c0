"""Generate mode: free greedy decoding matched to a candidate title after normalisation
(eapo_exp.evaluation.generate). HR@1 is over ALL samples, an unmatched output counting as a
miss (S-DPO's convention); hr@1_valid is over matched outputs only (LLaRA's), with
valid_ratio the share of matched outputs."""

from __future__ import annotations

from collections.abc import Sequence

from eapo_exp.data.prompts import PromptBuilder, PromptExample
from eapo_exp.errors import ConfigError
from eapo_exp.evaluation import generate as decoding
from eapo_exp.evaluation.metrics import metrics_from_ranks, valid_output_metrics
from eapo_exp.evaluation.modes.base import EvalMode, Ranking

# Tokens allowed past the longest candidate when max_new_tokens is not set.
SLACK_TOKENS = 4


class GenerateMode(EvalMode):
    """max_new_tokens: the decoding budget; None = the batch's longest candidate + 4."""

    name = "generate"
    hr1_convention = ("all_samples (invalid output = miss, S-DPO); hr@1_valid: valid outputs "
                      "only (LLaRA)")

    def __init__(self, max_new_tokens: int | None = None) -> None:
        if max_new_tokens is not None and (isinstance(max_new_tokens, bool)
                                           or not isinstance(max_new_tokens, int)
                                           or max_new_tokens < 1):
            raise ConfigError("eval.mode.max_new_tokens must be null or an integer >= 1, "
                              f"got {max_new_tokens!r}")
        self.max_new_tokens = max_new_tokens

    def rank_batch(self, model, builder: PromptBuilder, examples: Sequence[PromptExample],
                   pad_id: int) -> list[Ranking]:
        budget = self.max_new_tokens
        if budget is None:
            budget = max(len(c) for e in examples for c in e.completion_ids) + SLACK_TOKENS
        generated = decoding.greedy_generate(model, [e.prompt_ids for e in examples], pad_id,
                                             builder.eos_id, budget)
        rankings = []
        for example, ids in zip(examples, generated):
            text = builder.tokenizer.decode(ids, skip_special_tokens=True)
            k = decoding.match_candidate(text, example.candidate_titles)
            target = decoding.normalize_title(example.candidate_titles[example.target_index])
            hit = k is not None and decoding.normalize_title(example.candidate_titles[k]) == target
            rankings.append(Ranking(order=[k] if k is not None else [],
                                    target_rank=1 if hit else 0,
                                    fields={"generated": text, "valid": k is not None}))
        return rankings

    def metrics(self, predictions: Sequence[dict]) -> dict[str, float]:
        ranks = [p["target_rank"] for p in predictions]
        return {**metrics_from_ranks(ranks, ks=(1,)),
                **valid_output_metrics(ranks, [p["valid"] for p in predictions])}
