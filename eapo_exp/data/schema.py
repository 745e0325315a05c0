"""The sample format every later stage reads (experts, prompts, SFT, preference, evaluation).

Items are dense integer ids 1..num_items; 0 is padding. Each split is a `datasets.Dataset`
with one next-item sample per row:

    user        str          raw user id
    history     list[int]    up to `history_len` preceding item ids, oldest first
    target      int          the item the user interacted with next
    candidates  list[int]    target plus `num_negatives` never-interacted items, shuffled
    timestamp   float        the target interaction's timestamp

Split names: train, valid, test, and the cold-start test variants test_user_cold
(test users with no training interaction) and test_item_cold (targets never in training).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import datasets

SPLITS = ("train", "valid", "test")
COLD_START_SPLITS = ("test_user_cold", "test_item_cold")


@dataclass
class ItemCatalog:
    """Dense item ids. Index 0 is padding (raw id "" and title "")."""

    raw_ids: list[str]
    titles: list[str]

    @property
    def num_items(self) -> int:
        return len(self.raw_ids) - 1

    def title(self, item: int) -> str:
        return self.titles[item]


@dataclass
class SampleSet:
    catalog: ItemCatalog
    splits: dict[str, datasets.Dataset]
    item_noun: str = "item"
    stats: dict = field(default_factory=dict)
    fingerprint: str = ""

    def split(self, name: str) -> datasets.Dataset:
        if name not in self.splits:
            raise KeyError(f"no split {name!r}; available: {sorted(self.splits)}")
        return self.splits[name]
