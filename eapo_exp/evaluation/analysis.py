"""The paper's error analyses (Fig. 1a, 4a/b, C.3), computed from ranking predictions and
the frozen expert's scores of the same candidate lists.

A *high-preference negative* of a sample is a non-target candidate that the expert ranks
among its top `k` non-target candidates: an item the user plausibly likes but did not pick.

- error attribution: among samples the LLM gets wrong at rank 1, the share whose wrongly
  top-ranked item is a high-preference negative (the paper reports > 40% for DPO);
- interference rate: the share of all samples in which the LLM ranks at least one
  high-preference negative above the target (a target outside the top-5 list counts as
  below every listed item).
"""

from __future__ import annotations

import numpy as np


def high_preference_negatives(candidates: list[int], target: int, scores: np.ndarray,
                              k: int) -> set[int]:
    negatives = [(s, c) for c, s in zip(candidates, scores) if c != target]
    negatives.sort(key=lambda pair: -pair[0])
    return {c for _, c in negatives[:k]}


def error_analysis(predictions: list[dict], rows: list[dict], expert_scores: np.ndarray,
                   k: int = 3) -> dict[str, float]:
    """predictions[i] (ranked_items, target) ranks rows[i]; expert_scores[i] scores its
    candidates in the row's order."""
    errors = high_pref_errors = interfered = 0
    for pred, row, scores in zip(predictions, rows, expert_scores):
        target = int(row["target"])
        high = high_preference_negatives(list(row["candidates"]), target, scores, k)
        ranked = [int(i) for i in pred["ranked_items"]]
        above = ranked[:ranked.index(target)] if target in ranked else ranked
        interfered += any(item in high for item in above)
        if ranked and ranked[0] != target:
            errors += 1
            high_pref_errors += ranked[0] in high
    n = len(predictions)
    return {"k": k, "samples": n, "errors_at_1": errors,
            "share_high_preference": high_pref_errors / errors if errors else float("nan"),
            "interference_rate": interfered / n if n else float("nan")}
