"""Ranking metrics over candidate lists.

Tie rule (pessimistic): a candidate scored equal to the target counts as ranked above it,
so a scorer that gives every candidate the same score gets rank C (the last place), never a
lucky first place. Ranks are 1-based.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np


def target_ranks(scores: np.ndarray, target_positions: np.ndarray) -> np.ndarray:
    """1-based rank of each row's target among its candidates, ties counted against it.

    scores: [N, C] higher is better; target_positions: [N] column of the target.
    """
    scores = np.asarray(scores, dtype=np.float64)
    target_positions = np.asarray(target_positions, dtype=np.int64)
    if scores.ndim != 2 or target_positions.shape != (scores.shape[0],):
        raise ValueError(f"scores must be [N, C] and targets [N]; got {scores.shape}, "
                         f"{target_positions.shape}")
    target_scores = scores[np.arange(len(scores)), target_positions][:, None]
    not_below = (scores >= target_scores).sum(axis=1)  # includes the target itself
    # NaN scores rank last: a NaN target is never above anything.
    ranks = np.where(np.isnan(target_scores[:, 0]), scores.shape[1], not_below)
    return ranks.astype(np.int64)


def rank_in_list(ranked_items: Sequence, target) -> int:
    """1-based position of target in a ranked list, or 0 when absent (a miss at every k)."""
    for position, item in enumerate(ranked_items, start=1):
        if item == target:
            return position
    return 0


def metrics_from_ranks(ranks: Iterable[int], ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """HR@k and NDCG@k (single relevant item) averaged over samples.

    A rank of 0 means the target was not in the list (miss). NDCG@1 equals HR@1 and is
    not reported separately.
    """
    ranks = np.asarray(list(ranks), dtype=np.int64)
    if ranks.size == 0:
        raise ValueError("no ranks to average")
    found = ranks > 0
    result: dict[str, float] = {}
    for k in ks:
        hit = found & (ranks <= k)
        result[f"hr@{k}"] = float(hit.mean())
        if k > 1:
            gains = np.where(hit, 1.0 / np.log2(np.maximum(ranks, 1) + 1.0), 0.0)
            result[f"ndcg@{k}"] = float(gains.mean())
    result["n"] = int(ranks.size)
    return result


def valid_output_metrics(ranks: Sequence[int], valid: Sequence[bool]) -> dict[str, float]:
    """For rankers that may name no candidate (free generation, a chat reply): valid_ratio,
    the share of valid outputs; hr@1_valid, HR@1 over valid outputs only (LLaRA's
    convention; 0 when none is valid); n_valid."""
    valid = np.asarray(valid, dtype=bool)
    hits = np.asarray(ranks) == 1
    return {"valid_ratio": float(valid.mean()),
            "hr@1_valid": float(hits[valid].mean()) if valid.any() else 0.0,
            "n_valid": int(valid.sum())}


def dcg_at_rank(rank: int) -> float:
    return 1.0 / math.log2(rank + 1)
