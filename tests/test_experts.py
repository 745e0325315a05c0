"""Experts: shapes, padding, persistence, and that each learns a planted sequential pattern."""

from __future__ import annotations

import json
import random

import datasets
import numpy as np
import pytest
import torch

from eapo_exp.config import ExpertTrainingConfig
from eapo_exp.errors import ConfigError
from eapo_exp.experts import (
    Caser,
    GRU4Rec,
    PopularityRanker,
    SASRec,
    evaluate_scorer,
    load_expert,
    pad_histories,
    save_expert,
    score_candidates,
    subsample_indices,
    train_expert,
)

NUM_ITEMS = 100
HISTORY_LEN = 10
NUM_NEGATIVES = 20
MAX_EPOCHS = 6
EXPERTS = {"sasrec": SASRec, "gru4rec": GRU4Rec, "caser": Caser}


def _planted_splits(num_users: int = 160, seq_len: int = 20, noise: float = 0.1,
                    seed: int = 0) -> dict[str, datasets.Dataset]:
    """Each user walks the item ring: next item = last + 1 (mod N) with prob 1 - noise, else a
    random item. Starts are uniform, so item popularity is flat and tells nothing.

    Per user: targets 1..T-3 train, T-2 valid, T-1 test; candidates = target + 20 random
    items the user never touched, shuffled.
    """
    rng = random.Random(seed)
    rows: dict[str, list[dict]] = {"train": [], "valid": [], "test": []}
    for u in range(num_users):
        seq = [rng.randint(1, NUM_ITEMS)]
        while len(seq) < seq_len:
            nxt = seq[-1] % NUM_ITEMS + 1 if rng.random() > noise else rng.randint(1, NUM_ITEMS)
            seq.append(nxt)
        seen = set(seq)
        pool = [i for i in range(1, NUM_ITEMS + 1) if i not in seen]
        for t in range(1, seq_len):
            split = "train" if t < seq_len - 2 else ("valid" if t == seq_len - 2 else "test")
            candidates = [seq[t], *rng.sample(pool, NUM_NEGATIVES)]
            rng.shuffle(candidates)
            rows[split].append({"user": f"u{u}", "history": seq[max(0, t - HISTORY_LEN):t],
                                "target": seq[t], "candidates": candidates,
                                "timestamp": float(t)})
    return {name: datasets.Dataset.from_list(r) for name, r in rows.items()}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread is as fast, and far faster when other jobs share the CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def splits() -> dict[str, datasets.Dataset]:
    return _planted_splits()


@pytest.fixture(scope="module")
def popularity_ndcg(splits) -> float:
    ranker = PopularityRanker(NUM_ITEMS).fit(splits["train"])
    return evaluate_scorer(ranker, splits["valid"], HISTORY_LEN)["ndcg@5"]


def _small(name: str) -> torch.nn.Module:
    kwargs = {"hidden_size": 32}
    if name in ("sasrec", "caser"):
        kwargs["max_len"] = HISTORY_LEN
    torch.manual_seed(0)
    return EXPERTS[name](NUM_ITEMS, **kwargs)


@pytest.fixture(scope="module")
def trained(splits) -> dict[str, tuple[torch.nn.Module, dict]]:
    out = {}
    for name in EXPERTS:
        model = _small(name)
        settings = ExpertTrainingConfig(lr=5e-3, batch_size=128, max_epochs=MAX_EPOCHS,
                                        patience=2, min_delta=0.0)
        result = train_expert(model, splits["train"], splits["valid"], history_len=HISTORY_LEN,
                              settings=settings, progress=False)
        out[name] = (model, result)
    return out


# ------------------------------------------------------------------ helpers and shapes

def test_pad_histories_left_pads_and_keeps_most_recent():
    padded = pad_histories([[1, 2, 3], [], [4, 5, 6, 7, 8]], 4)
    assert padded.dtype == torch.long
    assert padded.tolist() == [[0, 1, 2, 3], [0, 0, 0, 0], [5, 6, 7, 8]]
    with pytest.raises(ValueError):
        pad_histories([[1]], 0)


@pytest.mark.parametrize("name", sorted(EXPERTS))
def test_score_shapes_and_all_padding_rows(name):
    model = _small(name).eval()
    histories = pad_histories([[1, 2, 3], [], [7] * 12], HISTORY_LEN)
    candidates = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
    with torch.no_grad():
        scores = model.score(histories, candidates)
        logits = model.full_logits(histories)
    assert scores.shape == (3, 4)
    assert torch.isfinite(scores).all()
    assert logits.shape == (3, NUM_ITEMS + 1)
    assert torch.isneginf(logits[:, 0]).all() and torch.isfinite(logits[:, 1:]).all()
    # score is the candidate column of full_logits
    torch.testing.assert_close(scores, logits.gather(1, candidates))


@pytest.mark.parametrize("name", sorted(EXPERTS))
def test_left_padding_invariance(name):
    model = _small(name).eval()
    history = [4, 9, 2]
    candidates = torch.tensor([[1, 2, 3, 50, 99]])
    with torch.no_grad():
        reference = model.score(pad_histories([history], HISTORY_LEN), candidates)
        for width in (3, 5, 15):  # exact fit, less and more padding than max_len
            scores = model.score(pad_histories([history], width), candidates)
            torch.testing.assert_close(scores, reference, rtol=1e-5, atol=1e-5)
        # the same history in a batch with other rows scores the same
        batch = pad_histories([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], history, []], HISTORY_LEN)
        scores = model.score(batch, candidates.expand(3, -1))[1:2]
        torch.testing.assert_close(scores, reference, rtol=1e-5, atol=1e-5)


def test_gru4rec_ignores_items_beyond_history():
    # GRU4Rec has no max_len: longer histories are read whole, only padding is skipped.
    model = GRU4Rec(NUM_ITEMS, hidden_size=16).eval()
    with torch.no_grad():
        a = model.encode(pad_histories([[1, 2, 3]], 3))
        b = model.encode(pad_histories([[1, 2, 3]], 8))
        c = model.encode(pad_histories([[5, 1, 2, 3]], 8))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_constructor_validation():
    with pytest.raises(ValueError):
        SASRec(NUM_ITEMS, hidden_size=30, num_heads=4)
    with pytest.raises(ValueError):
        Caser(0)


# ------------------------------------------------------------------ popularity

def test_popularity_counts_each_user_item_once_and_keeps_ties():
    train = datasets.Dataset.from_list([
        {"user": "a", "history": [1, 2], "target": 3, "candidates": [3, 4], "timestamp": 0.0},
        {"user": "a", "history": [1, 2, 3], "target": 4, "candidates": [4, 5], "timestamp": 1.0},
        {"user": "b", "history": [2], "target": 5, "candidates": [5, 1], "timestamp": 2.0},
    ])
    ranker = PopularityRanker(6).fit(train)
    assert ranker.counts.tolist() == [0, 1, 2, 1, 1, 1, 0]
    scores = score_candidates(ranker, [[1], []], [[2, 3, 6], [3, 4, 5]], HISTORY_LEN)
    assert scores.tolist() == [[2, 1, 0], [1, 1, 1]]
    # all-tie candidate lists rank the target last (pessimistic ties): HR@1 = HR@5 = 0
    valid = datasets.Dataset.from_list([
        {"user": "c", "history": [1], "target": 3,
         "candidates": [3, 4, 5, 1, 6, 6], "timestamp": 3.0}])
    metrics = evaluate_scorer(ranker, valid, HISTORY_LEN)
    assert metrics["hr@1"] == 0.0 and metrics["n"] == 1


def test_popularity_is_uninformative_on_planted_data(popularity_ndcg):
    # a flat popularity ranks the target near chance (ndcg@5 of a random ranker is ~0.13)
    assert popularity_ndcg < 0.35


# ------------------------------------------------------------------ training

@pytest.mark.parametrize("name", sorted(EXPERTS))
def test_expert_learns_planted_pattern_and_beats_popularity(name, trained, popularity_ndcg,
                                                            splits):
    model, result = trained[name]
    assert result["valid"]["ndcg@5"] > popularity_ndcg + 0.3, (name, result["valid"])
    assert result["valid"]["ndcg@5"] > 0.6, (name, result["valid"])
    assert 1 <= result["best_epoch"] <= result["epochs_run"] <= MAX_EPOCHS
    assert result["train_samples_used"] == len(splits["train"])
    assert set(result["valid"]) == {"hr@1", "hr@5", "ndcg@5", "n"}
    assert result["history"] and result["history"][-1]["epoch"] == result["epochs_run"]
    # the restored state is the best one: re-evaluation reproduces the reported metrics
    assert evaluate_scorer(model, splits["valid"], HISTORY_LEN) == result["valid"]
    assert not model.training


@pytest.mark.parametrize("name", sorted(EXPERTS))
def test_save_load_round_trip(name, trained, splits, tmp_path):
    model, result = trained[name]
    save_expert(model, tmp_path, {"valid": result["valid"]}, {"expert": name, "seed": 0})
    assert {p.name for p in tmp_path.iterdir()} == {"model.pt", "expert.json", "metrics.json"}
    description = json.loads((tmp_path / "expert.json").read_text())
    assert description["class"] == type(model).__name__
    assert description["kwargs"] == model.init_kwargs
    loaded = load_expert(tmp_path)
    assert type(loaded) is type(model) and not loaded.training
    test = splits["test"]
    a = score_candidates(model, test["history"], test["candidates"], HISTORY_LEN)
    b = score_candidates(loaded, test["history"], test["candidates"], HISTORY_LEN)
    assert a.shape == (len(test), NUM_NEGATIVES + 1)
    np.testing.assert_array_equal(a, b)


def test_popularity_save_load(splits, tmp_path):
    ranker = PopularityRanker(NUM_ITEMS).fit(splits["train"])
    save_expert(ranker, tmp_path, {}, {})
    loaded = load_expert(tmp_path)
    assert torch.equal(loaded.counts, ranker.counts)


def test_score_candidates_ragged_and_in_eval_mode(trained):
    model, _ = trained["sasrec"]
    model.train()
    scores = score_candidates(model, [[1, 2], []], [[3, 4, 5], [6]], HISTORY_LEN, batch_size=1)
    assert model.training  # the caller's mode is restored
    model.eval()
    assert scores.shape == (2, 3) and np.isneginf(scores[1, 1:]).all()
    again = score_candidates(model, [[1, 2], []], [[3, 4, 5], [6]], HISTORY_LEN)
    np.testing.assert_allclose(scores, again, rtol=1e-5)  # dropout was off


def test_data_fraction(splits):
    with pytest.raises(ValueError):
        subsample_indices(10, 0.0, 0)
    for bad in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="expert.data_fraction"):
            train_expert(_small("gru4rec"), splits["train"], splits["valid"],
                         history_len=HISTORY_LEN,
                         settings=ExpertTrainingConfig(data_fraction=bad), progress=False)
    a, b = subsample_indices(1000, 0.5, 3), subsample_indices(1000, 0.5, 3)
    assert len(a) == 500 and np.array_equal(a, b) and np.all(np.diff(a) > 0)
    model = _small("gru4rec")
    result = train_expert(model, splits["train"], splits["valid"], history_len=HISTORY_LEN,
                          settings=ExpertTrainingConfig(data_fraction=0.25, max_epochs=1),
                          progress=False)
    assert result["train_samples_used"] == round(0.25 * len(splits["train"]))
    assert result["epochs_run"] == 1


def test_training_settings_come_from_the_expert_node_and_are_checked():
    from omegaconf import OmegaConf

    from eapo_exp.training.settings import expert_training

    node = OmegaConf.create({"name": "gru4rec", "model": {}, "train_if_missing": True,
                             "lr": 0.01, "batch_size": 64, "max_epochs": 4, "patience": 2,
                             "min_delta": 0.0, "weight_decay": 0.1, "data_fraction": 0.5,
                             "seed": 3})
    assert expert_training(node) == ExpertTrainingConfig(lr=0.01, batch_size=64, max_epochs=4,
                                                         patience=2, min_delta=0.0,
                                                         weight_decay=0.1, data_fraction=0.5,
                                                         seed=3)
    for key, bad in (("patience", 0), ("lr", 0.0), ("min_delta", -1e-3), ("batch_size", 0)):
        with pytest.raises(ConfigError, match=f"expert.{key}"):
            expert_training(OmegaConf.merge(node, {key: bad}))


def test_training_is_deterministic(splits):
    results = []
    for _ in range(2):
        model = _small("sasrec")
        settings = ExpertTrainingConfig(max_epochs=2, seed=1)
        results.append(train_expert(model, splits["train"], splits["valid"],
                                    history_len=HISTORY_LEN, settings=settings,
                                    progress=False)["history"])
    assert results[0] == results[1]


def test_evaluate_rejects_target_missing_from_candidates():
    bad = datasets.Dataset.from_list([
        {"user": "a", "history": [1], "target": 2, "candidates": [3, 4], "timestamp": 0.0}])
    with pytest.raises(ValueError, match="not among its candidates"):
        evaluate_scorer(PopularityRanker(5), bad, HISTORY_LEN)
