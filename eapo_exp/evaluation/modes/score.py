"""Score mode: every candidate ranked by log p(title + EOS | prompt), one shared-prefix forward
per batch; ties count against the target (eapo_exp.evaluation.metrics.target_ranks)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from eapo_exp.data.prompts import PromptBuilder, PromptExample
from eapo_exp.errors import ConfigError
from eapo_exp.evaluation.metrics import target_ranks
from eapo_exp.evaluation.modes.base import EvalMode, Ranking
from eapo_exp.training.shared_prefix import completion_logprobs


class ScoreMode(EvalMode):
    """length_normalize: rank by the mean token log-prob instead of the sum."""

    name = "score"

    def __init__(self, length_normalize: bool = False) -> None:
        if not isinstance(length_normalize, bool):
            raise ConfigError(f"eval.mode.length_normalize must be true or false, "
                              f"got {length_normalize!r}")
        self.length_normalize = length_normalize

    def rank_batch(self, model, builder: PromptBuilder, examples: Sequence[PromptExample],
                   pad_id: int) -> list[Ranking]:
        result = completion_logprobs(
            model, [e.prompt_ids for e in examples], [e.completion_ids for e in examples],
            pad_id, length_normalize=self.length_normalize,
        )
        scores = result.logprobs.float().cpu().numpy()
        ranks = target_ranks(scores, np.array([e.target_index for e in examples]))
        rankings = []
        for b, example in enumerate(examples):
            row = scores[b, :len(example.completion_ids)]
            rankings.append(Ranking(
                order=np.argsort(-row, kind="stable").tolist(), target_rank=int(ranks[b]),
                fields={"scores": [round(float(s), 5) for s in row]}))
        return rankings

    def settings(self) -> dict:
        return {"length_normalize": self.length_normalize}
