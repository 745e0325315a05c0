"""Sample building: leakage, candidates, splits, cold-start variants, caching."""

import numpy as np
import pandas as pd
import pytest

from eapo_exp.cache import ArtifactCache
from eapo_exp.data.interactions import InteractionData
from eapo_exp.data.samples import build_samples, k_core_filter
from eapo_exp.data.store import cached_samples, samples_spec
from eapo_exp.errors import ConfigError


def random_interactions(num_users=60, num_items=80, per_user=15, seed=0, untitled=()):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(num_users):
        items = rng.choice(num_items, size=per_user, replace=False)
        start = rng.integers(0, 10_000)
        # coarse timestamps create ties on purpose
        for j, item in enumerate(items):
            rows.append({"user": f"u{u}", "item": f"i{item}", "timestamp": float(start + 10 * (j // 2))})
    inter = pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    titles = {f"i{i}": f"title {i}" for i in range(num_items) if f"i{i}" not in untitled}
    return InteractionData(inter, titles)


@pytest.fixture(scope="module")
def data():
    return random_interactions()


@pytest.fixture(scope="module")
def samples(data):
    return build_samples(data, history_len=5, min_history=1, num_negatives=20, seed=3)


def item_times(data, samples):
    """(user, dense item) -> timestamp."""
    index = {raw: i for i, raw in enumerate(samples.catalog.raw_ids)}
    return {(r.user, index[r.item]): r.timestamp for r in data.interactions.itertuples()}


def test_no_future_leakage(data, samples):
    times = item_times(data, samples)
    for split in ("train", "valid", "test"):
        for row in samples.split(split):
            for item in row["history"]:
                assert times[(row["user"], item)] <= row["timestamp"]
            assert len(row["history"]) <= 5


def test_candidates_contain_target_once_and_no_interacted_item(data, samples):
    index = {raw: i for i, raw in enumerate(samples.catalog.raw_ids)}
    seen = data.interactions.groupby("user")["item"].apply(lambda s: {index[x] for x in s})
    for split in ("train", "valid", "test"):
        for row in samples.split(split):
            cands = row["candidates"]
            assert len(cands) == 21 and len(set(cands)) == 21
            assert cands.count(row["target"]) == 1
            others = set(cands) - {row["target"]}
            assert not (others & seen[row["user"]])


def test_candidates_are_shuffled(samples):
    positions = [row["candidates"].index(row["target"]) for row in samples.split("train")]
    assert len(set(positions)) > 10


def test_deterministic(data, samples):
    again = build_samples(data, history_len=5, min_history=1, num_negatives=20, seed=3)
    assert again.split("test")["candidates"] == samples.split("test")["candidates"]
    other_seed = build_samples(data, history_len=5, min_history=1, num_negatives=20, seed=4)
    assert other_seed.split("test")["candidates"] != samples.split("test")["candidates"]


def test_split_proportions_and_chronology(data, samples):
    per_split = samples.stats["interactions_per_split"]
    n = len(data.interactions)
    assert per_split["train"] == int(0.8 * n)
    assert per_split["valid"] == int(0.1 * n)
    assert sum(per_split.values()) == n
    assert max(samples.split("train")["timestamp"]) <= min(samples.split("valid")["timestamp"])
    assert max(samples.split("valid")["timestamp"]) <= min(samples.split("test")["timestamp"])


def test_min_history_drops_are_counted(data):
    s = build_samples(data, history_len=5, min_history=3, num_negatives=20)
    dropped = sum(s.stats["dropped_short_history"].values())
    assert dropped == 60 * 3  # every user's first three interactions
    assert all(len(r["history"]) >= 3 for r in s.split("train"))


def test_untitled_items_dropped_and_counted():
    data = random_interactions(untitled={"i0", "i1"})
    s = build_samples(data, num_negatives=20)
    assert s.stats["dropped_untitled_items"] == 2
    assert "i0" not in s.catalog.raw_ids and "i1" not in s.catalog.raw_ids


def with_cold_start(data: InteractionData) -> InteractionData:
    """Plants, after every other interaction (so in the test window), an item no training
    interaction has (four users' next target) and a user with no training interaction."""
    late = 100_000.0
    rows = [{"user": f"u{u}", "item": "i_cold", "timestamp": late + u} for u in range(4)]
    rows += [{"user": "u_cold", "item": f"i{item}", "timestamp": late + 10 + j}
             for j, item in enumerate((3, 5, 7, 9))]
    inter = pd.concat([data.interactions, pd.DataFrame(rows)], ignore_index=True)
    return InteractionData(inter, {**data.titles, "i_cold": "a cold title"})


def test_cold_start_variants(data):
    samples = build_samples(with_cold_start(data), history_len=5, min_history=1,
                            num_negatives=20, seed=3)
    cold_item = samples.catalog.raw_ids.index("i_cold")
    train_users = set(samples.split("train")["user"])
    train_items = {i for r in samples.split("train") for i in r["history"] + [r["target"]]}
    test = samples.split("test")
    item_cold = samples.split("test_item_cold")
    user_cold = samples.split("test_user_cold")
    # The four planted rows, and no test row whose target was seen in training.
    assert sorted(item_cold["user"]) == ["u0", "u1", "u2", "u3"]
    assert set(item_cold["target"]) == {cold_item} and cold_item not in train_items
    assert sum(r["target"] == cold_item for r in test) == 4
    # u_cold's first interaction has no history (min_history=1): three samples remain.
    planted = [r for r in user_cold if r["user"] == "u_cold"]
    assert [len(r["history"]) for r in planted] == [1, 2, 3]
    assert "u_cold" not in train_users
    assert len(user_cold) == sum(r["user"] not in train_users for r in test) > len(planted)


def test_k_core():
    inter = pd.DataFrame({"user": ["a", "a", "a", "b", "b", "c"], "item": ["x", "y", "z", "x", "y", "x"],
                          "timestamp": [1.0, 2, 3, 4, 5, 6]})
    kept = k_core_filter(inter, 2)
    assert set(kept["user"]) == {"a", "b"} and set(kept["item"]) == {"x", "y"}


@pytest.mark.parametrize("kwargs", [{"history_len": 0}, {"num_negatives": 0},
                                    {"split_ratios": (0.5, 0.5, 0.5)}, {"min_history": 20}])
def test_bad_params_rejected(data, kwargs):
    with pytest.raises(ConfigError):
        build_samples(data, **kwargs)


def test_cache_reuses_and_roundtrips(tmp_path, data):
    cache = ArtifactCache(tmp_path)
    calls = []

    def build():
        calls.append(1)
        return build_samples(data, history_len=5, num_negatives=20)

    spec = samples_spec({"_target_": "x"}, {"history_len": 5})
    first = cached_samples(cache, spec, build)
    second = cached_samples(cache, spec, build)
    assert len(calls) == 1
    assert first.fingerprint == second.fingerprint
    assert second.split("test")["candidates"] == first.split("test")["candidates"]
    assert second.catalog.titles == first.catalog.titles
