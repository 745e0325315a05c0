"""The paper's error analyses (eapo_exp/evaluation/analysis.py), hand-computed."""

from __future__ import annotations

import math

import numpy as np

from eapo_exp.evaluation.analysis import error_analysis, high_preference_negatives

# One list for every sample: target 3; the expert scores 1 > 4 > 3 > 5 > 2.
CANDIDATES = [1, 2, 3, 4, 5]
SCORES = np.array([0.9, 0.1, 0.5, 0.8, 0.2])


def test_high_preference_negatives_are_the_experts_top_non_targets():
    assert high_preference_negatives(CANDIDATES, 3, SCORES, 2) == {1, 4}
    assert high_preference_negatives(CANDIDATES, 3, SCORES, 1) == {1}
    assert high_preference_negatives(CANDIDATES, 1, SCORES, 1) == {4}  # the target is skipped


def test_error_attribution_and_interference_hand_computed():
    ranked = [
        [3, 1, 4],  # hit at 1: nothing above the target
        [1, 3, 4],  # error; 1 (high) above the target and at rank 1
        [5, 2, 3],  # error; only low-preference items above the target
        [5, 4],     # error; target not listed, so 4 (high) counts as above it
        [],         # no parsable list: no error at rank 1, nothing above the target
    ]
    predictions = [{"ranked_items": r} for r in ranked]
    rows = [{"target": 3, "candidates": CANDIDATES}] * len(ranked)
    scores = np.stack([SCORES] * len(ranked))
    result = error_analysis(predictions, rows, scores, k=2)
    assert result == {"k": 2, "samples": 5, "errors_at_1": 3,
                      "share_high_preference": 1 / 3, "interference_rate": 2 / 5}
    # With k = 1 only item 1 is high-preference: sample 4 no longer interferes.
    narrow = error_analysis(predictions, rows, scores, k=1)
    assert (narrow["share_high_preference"], narrow["interference_rate"]) == (1 / 3, 1 / 5)


def test_no_errors_and_no_samples_give_nan_shares():
    hit = error_analysis([{"ranked_items": [3]}], [{"target": 3, "candidates": CANDIDATES}],
                         SCORES[None], k=2)
    assert hit["errors_at_1"] == 0 and math.isnan(hit["share_high_preference"])
    assert hit["interference_rate"] == 0.0
    assert math.isnan(error_analysis([], [], np.zeros((0, 5)))["interference_rate"])
