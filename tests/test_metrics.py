import math

import numpy as np
import pytest

from eapo_exp.evaluation.metrics import (
    metrics_from_ranks,
    rank_in_list,
    target_ranks,
    valid_output_metrics,
)


def test_ranks_hand_computed():
    scores = np.array([
        [0.9, 0.1, 0.5],   # target col 0 is the best -> rank 1
        [0.9, 0.1, 0.5],   # target col 2 -> rank 2
        [0.9, 0.1, 0.5],   # target col 1 -> rank 3
    ])
    assert target_ranks(scores, np.array([0, 2, 1])).tolist() == [1, 2, 3]


def test_ties_count_against_the_target():
    # Pessimistic rule: a candidate scored equal to the target ranks above it.
    scores = np.array([[1.0, 1.0, 1.0, 1.0], [2.0, 1.0, 1.0, 0.0]])
    assert target_ranks(scores, np.array([0, 1])).tolist() == [4, 3]


def test_nan_target_ranks_last():
    scores = np.array([[np.nan, 0.0, 1.0]])
    assert target_ranks(scores, np.array([0])).tolist() == [3]


def test_metrics_from_ranks_hand_computed():
    m = metrics_from_ranks([1, 2, 6, 0], ks=(1, 5))
    assert m["hr@1"] == pytest.approx(0.25)
    assert m["hr@5"] == pytest.approx(0.5)
    expected_ndcg = (1.0 + 1.0 / math.log2(3)) / 4
    assert m["ndcg@5"] == pytest.approx(expected_ndcg)
    assert m["n"] == 4
    assert "ndcg@1" not in m


def test_any_k():
    m = metrics_from_ranks([3, 10, 21], ks=(3, 10, 20))
    assert m["hr@3"] == pytest.approx(1 / 3)
    assert m["hr@10"] == pytest.approx(2 / 3)
    assert m["hr@20"] == pytest.approx(2 / 3)
    assert m["ndcg@3"] == pytest.approx(0.5 / 3)


def test_rank_in_list():
    assert rank_in_list(["a", "b", "c"], "b") == 2
    assert rank_in_list(["a", "b"], "z") == 0


def test_empty_ranks_rejected():
    with pytest.raises(ValueError):
        metrics_from_ranks([])


def test_valid_output_metrics_hand_computed():
    # Four outputs: a hit, a valid miss, an invalid one, a hit.
    m = valid_output_metrics([1, 0, 0, 1], [True, True, False, True])
    assert m == {"valid_ratio": 0.75, "hr@1_valid": pytest.approx(2 / 3), "n_valid": 3}
    assert valid_output_metrics([0, 0], [False, False])["hr@1_valid"] == 0.0
