"""The shape every evaluation mode has: rank one batch's candidates, then summarise the ranks.

A mode is built from its `conf/eval/<name>.yaml` (`eval.mode` is a `_target_` node with the
constructor's arguments) and listed in `eapo_exp.evaluation.modes.EVAL_MODES`.
`eapo_exp.evaluation.ranking.rank_candidates` owns what is common to every mode: sharding,
prompts, prediction rows, timing and truncation counts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from eapo_exp.data.prompts import PromptBuilder, PromptExample
from eapo_exp.evaluation.metrics import metrics_from_ranks

# Length of the ranked list kept per prediction; HR@k and NDCG@k go up to it.
TOP_K = 5


@dataclass
class Ranking:
    """One sample's result. order: candidate positions, best first (may be shorter than the
    candidate list: beam and generate rank only what they found); target_rank: 1-based, 0
    when the target is not in `order`; fields: the mode's own prediction fields."""

    order: Sequence[int]
    target_rank: int
    fields: dict[str, Any] = field(default_factory=dict)


class EvalMode(ABC):
    """One way to rank candidates. Subclasses set `name` (the key of EVAL_MODES and the
    `mode` reported with the metrics) and `hr1_convention` (which samples HR@1 averages
    over)."""

    name: ClassVar[str]
    hr1_convention: ClassVar[str] = "all_samples"

    @abstractmethod
    def rank_batch(self, model, builder: PromptBuilder, examples: Sequence[PromptExample],
                   pad_id: int) -> list[Ranking]:
        """Rank each example's candidates (the model is already in eval mode, no grad)."""

    def metrics(self, predictions: Sequence[dict]) -> dict[str, float]:
        """HR@1, HR@TOP_K, NDCG@TOP_K and n over the predictions' target ranks. Every output
        is a candidate, so valid_ratio is 1."""
        metrics = metrics_from_ranks([p["target_rank"] for p in predictions], ks=(1, TOP_K))
        metrics["valid_ratio"] = 1.0
        return metrics

    def settings(self) -> dict[str, Any]:
        """The mode's arguments that change its numbers, reported with the metrics."""
        return {}
