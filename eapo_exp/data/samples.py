"""From an interaction table to next-item samples with candidate lists (paper B.2.1, B.2.3).

Steps, each logged with what it dropped:
1. items without a title are dropped (with their interactions);
2. optional k-core filtering (users and items with at least k interactions, repeated to a
   fixed point);
3. all interactions ordered by (timestamp, original row order) and cut 8:1:1 into
   train / valid / test, globally by time;
4. every interaction becomes a sample whose history is the same user's preceding
   `history_len` items in that order (so never anything with a later timestamp);
   samples with fewer than `min_history` history items are dropped;
5. candidates = target + `num_negatives` items the user never interacted with (in the
   whole data), drawn from a generator seeded by (seed, sample position), then shuffled;
6. cold-start test variants: test samples of users with no training interaction, and
   test samples whose target never occurs in a training interaction.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import datasets
import numpy as np
import pandas as pd

from eapo_exp.data.interactions import InteractionData
from eapo_exp.data.schema import COLD_START_SPLITS, SPLITS, ItemCatalog, SampleSet
from eapo_exp.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SAMPLE_FEATURES = datasets.Features({
    "user": datasets.Value("string"),
    "history": datasets.Sequence(datasets.Value("int32")),
    "target": datasets.Value("int32"),
    "candidates": datasets.Sequence(datasets.Value("int32")),
    "timestamp": datasets.Value("float64"),
})


def validate_sample_params(*, k_core: int, history_len: int, min_history: int,
                           num_negatives: int, split_ratios) -> None:
    if history_len < 1:
        raise ConfigError(f"dataset.history_len must be >= 1, got {history_len}")
    if not 0 <= min_history <= history_len:
        raise ConfigError(f"dataset.min_history must be in [0, history_len={history_len}], "
                          f"got {min_history}")
    if num_negatives < 1:
        raise ConfigError(f"dataset.num_negatives must be >= 1 (candidate count >= 2), "
                          f"got {num_negatives}")
    if k_core < 0:
        raise ConfigError(f"dataset.k_core must be >= 0, got {k_core}")
    ratios = list(split_ratios)
    if len(ratios) != 3 or any(r <= 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise ConfigError(f"dataset.split_ratios must be three positive numbers summing to 1, "
                          f"got {ratios}")


def drop_untitled(inter: pd.DataFrame, titles: dict[str, str]) -> tuple[pd.DataFrame, dict]:
    titled = {item for item, title in titles.items() if title and str(title).strip()}
    keep = inter["item"].isin(titled)
    dropped_items = inter.loc[~keep, "item"].nunique()
    stats = {"dropped_untitled_items": int(dropped_items),
             "dropped_untitled_interactions": int((~keep).sum())}
    if dropped_items:
        log.info("dropped %d items without a title (%d interactions)", dropped_items,
                 (~keep).sum())
    return inter[keep], stats


def k_core_filter(inter: pd.DataFrame, k: int) -> pd.DataFrame:
    """Keep users and items with at least k interactions each, repeated until stable."""
    if k <= 1:
        return inter
    while True:
        user_counts = inter["user"].map(inter["user"].value_counts())
        item_counts = inter["item"].map(inter["item"].value_counts())
        keep = (user_counts >= k) & (item_counts >= k)
        if keep.all():
            return inter
        inter = inter[keep]


def build_samples(data: InteractionData, *, item_noun: str = "item", k_core: int = 0,
                  history_len: int = 10, min_history: int = 1, num_negatives: int = 20,
                  split_ratios=(0.8, 0.1, 0.1), seed: int = 0) -> SampleSet:
    validate_sample_params(k_core=k_core, history_len=history_len, min_history=min_history,
                           num_negatives=num_negatives, split_ratios=split_ratios)
    inter = data.interactions.reset_index(drop=True)
    stats: dict = {"raw_interactions": len(inter), "raw_users": int(inter["user"].nunique()),
                   "raw_items": int(inter["item"].nunique())}
    inter, untitled = drop_untitled(inter, data.titles)
    stats.update(untitled)
    before = len(inter)
    inter = k_core_filter(inter, k_core)
    stats["dropped_by_k_core"] = int(before - len(inter))
    if inter.empty:
        raise DataError("no interactions left after dropping untitled items and "
                        f"{k_core}-core filtering")

    # Original row order breaks timestamp ties, so equal-time interactions keep file order.
    inter = inter.assign(_row=np.arange(len(inter))).sort_values(
        ["timestamp", "_row"], kind="stable").reset_index(drop=True)
    raw_items = sorted(inter["item"].unique())
    item_index = {raw: i + 1 for i, raw in enumerate(raw_items)}
    catalog = ItemCatalog(raw_ids=[""] + raw_items,
                          titles=[""] + [str(data.titles[raw]).strip() for raw in raw_items])
    users = inter["user"].to_numpy()
    items = inter["item"].map(item_index).to_numpy(dtype=np.int64)
    times = inter["timestamp"].to_numpy(dtype=np.float64)

    n = len(inter)
    n_train = int(np.floor(split_ratios[0] * n))
    n_valid = int(np.floor(split_ratios[1] * n))
    split_of = np.full(n, 2, dtype=np.int8)
    split_of[:n_train] = 0
    split_of[n_train:n_train + n_valid] = 1

    user_items: dict[str, set[int]] = defaultdict(set)
    for user, item in zip(users, items):
        user_items[user].add(int(item))
    num_items = catalog.num_items
    require_catalog(num_items, num_negatives)

    rows: dict[str, list[dict]] = {name: [] for name in SPLITS}
    dropped_short = dict.fromkeys(SPLITS, 0)
    dropped_no_negatives = 0
    recent: dict[str, list[int]] = defaultdict(list)
    for position in range(n):
        user, item = users[position], int(items[position])
        history = recent[user][-history_len:]
        split = SPLITS[split_of[position]]
        recent[user].append(item)
        if len(history) < min_history:
            dropped_short[split] += 1
            continue
        seen = user_items[user]
        if num_items - len(seen) < num_negatives:
            dropped_no_negatives += 1
            continue
        rng = np.random.default_rng([seed, position])
        negatives = sample_negatives(rng, num_items, seen, num_negatives)
        candidates = negatives + [item]
        rng.shuffle(candidates)
        rows[split].append({"user": str(user), "history": list(history), "target": item,
                            "candidates": candidates, "timestamp": float(times[position])})

    train_users = set(users[:n_train])
    train_items = set(items[:n_train].tolist())
    splits = {name: to_dataset(rows[name]) for name in SPLITS}
    cold = {
        "test_user_cold": [r for r in rows["test"] if r["user"] not in train_users],
        "test_item_cold": [r for r in rows["test"] if r["target"] not in train_items],
    }
    for name in COLD_START_SPLITS:
        splits[name] = to_dataset(cold[name])

    stats.update({
        "users": len(user_items), "items": int(num_items), "interactions": int(n),
        "interactions_per_split": {"train": n_train, "valid": n_valid,
                                   "test": int(n - n_train - n_valid)},
        "samples": {name: len(ds) for name, ds in splits.items()},
        "mean_history_length": {name: float(np.mean([len(r["history"]) for r in rows[name]]))
                                if rows[name] else 0.0 for name in SPLITS},
        "dropped_short_history": dropped_short,
        "dropped_too_few_negatives": dropped_no_negatives,
        "candidates_per_sample": num_negatives + 1,
        "sparsity": float(1.0 - n / (len(user_items) * max(num_items, 1))),
    })
    require_samples(stats, min_history=min_history, num_negatives=num_negatives)
    return SampleSet(catalog=catalog, splits=splits, item_noun=item_noun, stats=stats)


def require_catalog(num_items: int, num_negatives: int) -> None:
    """Every user has interacted with one item at least, so a catalogue of num_negatives
    items or fewer leaves no sample enough never-interacted negatives."""
    if num_items <= num_negatives:
        raise DataError(f"the item catalogue has {num_items} item(s) after filtering; a sample "
                        f"needs its target plus dataset.num_negatives={num_negatives} items the "
                        f"user never interacted with (at least {num_negatives + 1} items)")


def require_samples(stats: dict, *, min_history: int, num_negatives: int) -> None:
    """Reject samples whose train, valid or test split is empty, naming the counts behind it."""
    samples = stats["samples"]
    empty = [name for name in SPLITS if samples.get(name, 0) == 0]
    if not empty:
        return
    per_split = stats["interactions_per_split"]
    short = stats["dropped_short_history"]
    raise DataError(
        f"empty split(s) {', '.join(empty)}: samples train/valid/test "
        f"{'/'.join(str(samples.get(s, 0)) for s in SPLITS)} from {stats['interactions']} "
        f"interactions ({'/'.join(str(per_split[s]) for s in SPLITS)} by the time split) of "
        f"{stats['users']} users on {stats['items']} items; dropped "
        f"{'/'.join(str(short[s]) for s in SPLITS)} with fewer than "
        f"dataset.min_history={min_history} earlier items and "
        f"{stats['dropped_too_few_negatives']} with fewer than "
        f"dataset.num_negatives={num_negatives} never-interacted items")


def to_dataset(rows: list[dict]) -> datasets.Dataset:
    columns = {name: [row[name] for row in rows] for name in SAMPLE_FEATURES}
    return datasets.Dataset.from_dict(columns, features=SAMPLE_FEATURES)


def sample_negatives(rng: np.random.Generator, num_items: int, seen: set[int],
                     count: int) -> list[int]:
    """`count` distinct items from 1..num_items not in `seen` (rejection sampling)."""
    chosen: list[int] = []
    taken = set(seen)
    if num_items - len(seen) < 4 * count:  # dense user: sample from the explicit pool
        pool = np.array([i for i in range(1, num_items + 1) if i not in seen])
        return [int(x) for x in rng.choice(pool, size=count, replace=False)]
    while len(chosen) < count:
        for item in rng.integers(1, num_items + 1, size=2 * count):
            item = int(item)
            if item not in taken:
                taken.add(item)
                chosen.append(item)
                if len(chosen) == count:
                    break
    return chosen
