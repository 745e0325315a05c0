"""A small synthetic dataset with planted structure, for tests and quick end-to-end runs.

- Items belong to `num_groups` groups of (nearly) equal size. Each group has its own
  vocabulary; an item's title is 2–3 words of its group's vocabulary plus the item number,
  e.g. "crimson falcon 17", so titles are distinct and the group is readable from the text.
- Each user starts in a random group and mostly stays there: before each interaction the
  user moves to another (uniformly chosen) group with probability `drift`.
- Within a group, items have a fixed popularity order (Zipf-like weights), and the item
  that follows the previous one in that order is boosted (`successor_boost`), so a
  sequence model can learn more than the group. A user never repeats an item; a user who
  has seen every item of the current group moves to another group.
- Interactions per user vary around `interactions_per_user` (Poisson, at least 3).
- Timestamps increase strictly per user and interleave across users (each user starts at a
  random time and advances by random gaps), so a global chronological split mixes users.
- No ratings. Everything is a function of `seed`.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from eapo_exp.data.interactions import InteractionData
from eapo_exp.errors import ConfigError

_WORD_TEXT = """
amber azure crimson golden ivory jade scarlet silver violet cobalt
falcon heron raven sparrow otter badger lynx fox wolf stag
river canyon meadow glacier harbor summit valley island desert forest
thunder ember frost storm breeze shadow dawn dusk comet nebula
lantern compass anchor crown dagger mirror shield castle tower bridge
velvet marble copper granite crystal paper timber iron linen silk
whisper echo melody rhythm chorus sonnet ballad anthem verse lullaby
orchard garden willow cedar maple lotus fern thistle clover poppy
pirate wizard knight ranger pilgrim scholar hermit captain jester oracle
quantum signal vector cipher engine circuit rocket orbit pixel laser
"""
_WORDS = _WORD_TEXT.split()
_SYLLABLES = ("ka", "lo", "mi", "ren", "tas", "vu", "zor", "bel", "dri", "fen", "gal", "hix")

WORDS_PER_GROUP = 8
POPULARITY_EXPONENT = 1.0


def _vocabularies(num_groups: int, rng: np.random.Generator) -> list[list[str]]:
    needed = num_groups * WORDS_PER_GROUP
    words = list(_WORDS)
    if needed > len(words):  # made-up words beyond the list, still distinct
        extra = (a + b + c for a in _SYLLABLES for b in _SYLLABLES for c in _SYLLABLES)
        words += list(itertools.islice(extra, needed - len(words)))
    chosen = rng.permutation(len(words))[:needed]
    return [[words[i] for i in chosen[g * WORDS_PER_GROUP:(g + 1) * WORDS_PER_GROUP]]
            for g in range(num_groups)]


class SyntheticSource:
    """Planted-structure interactions and titles; deterministic under `seed`."""

    def __init__(
        self,
        num_users: int = 200,
        num_items: int = 120,
        num_groups: int = 6,
        interactions_per_user: int = 20,
        drift: float = 0.15,
        seed: int = 0,
        successor_boost: float = 3.0,
    ) -> None:
        if num_users < 1:
            raise ConfigError(f"synthetic num_users must be >= 1, got {num_users}")
        if num_groups < 1 or num_items < 2 * num_groups:
            raise ConfigError(
                f"synthetic data needs num_groups >= 1 and num_items >= 2 * num_groups, got "
                f"num_items={num_items}, num_groups={num_groups}"
            )
        if interactions_per_user < 3:
            raise ConfigError(
                f"synthetic interactions_per_user must be >= 3, got {interactions_per_user}"
            )
        if not 0.0 <= drift <= 1.0:
            raise ConfigError(f"synthetic drift must be in [0, 1], got {drift}")
        if successor_boost < 0:
            raise ConfigError(f"synthetic successor_boost must be >= 0, got {successor_boost}")
        self.num_users = int(num_users)
        self.num_items = int(num_items)
        self.num_groups = int(num_groups)
        self.interactions_per_user = int(interactions_per_user)
        self.drift = float(drift)
        self.seed = int(seed)
        self.successor_boost = float(successor_boost)

    def item_groups(self) -> dict[str, int]:
        """Raw item id -> its planted group (for tests and analysis)."""
        return {f"i{i}": i % self.num_groups for i in range(self.num_items)}

    def load(self) -> InteractionData:
        rng = np.random.default_rng(self.seed)
        groups = self.num_groups
        item_ids = [f"i{i}" for i in range(self.num_items)]
        # Group g holds items g, g + G, g + 2G, ...; `members[g]` is in popularity order.
        members = [rng.permutation(np.arange(g, self.num_items, groups)) for g in range(groups)]
        position = np.empty(self.num_items, dtype=np.int64)  # index within its group's order
        for g in range(groups):
            position[members[g]] = np.arange(len(members[g]))
        popularity = [1.0 / (1.0 + np.arange(len(m))) ** POPULARITY_EXPONENT for m in members]

        vocab = _vocabularies(groups, rng)
        titles: dict[str, str] = {}
        for i in range(self.num_items):
            words = rng.choice(vocab[i % groups], size=int(rng.integers(2, 4)), replace=False)
            titles[item_ids[i]] = f"{' '.join(words)} {i + 1}"

        counts = np.maximum(3, rng.poisson(self.interactions_per_user, size=self.num_users))
        counts = np.minimum(counts, self.num_items)
        horizon = 1_000_000.0
        starts = rng.uniform(0.0, horizon * 0.2, size=self.num_users)
        mean_gap = horizon * 0.8 / max(1, self.interactions_per_user)

        users: list[str] = []
        items: list[int] = []
        times: list[float] = []
        for u in range(self.num_users):
            seen = np.zeros(self.num_items, dtype=bool)
            group = int(rng.integers(groups))
            previous = -1
            gaps = 1.0 + rng.exponential(mean_gap, size=int(counts[u]))
            clock = starts[u]
            for step in range(int(counts[u])):
                if step > 0 and rng.random() < self.drift and groups > 1:
                    group = (group + int(rng.integers(1, groups))) % groups
                    previous = -1
                candidates = members[group]
                if seen[candidates].all():  # exhausted: move to the nearest group with room
                    for shift in range(1, groups):
                        if not seen[members[(group + shift) % groups]].all():
                            group = (group + shift) % groups
                            break
                    candidates = members[group]
                    previous = -1
                weights = popularity[group].copy()
                if previous >= 0:
                    nxt = position[previous] + 1
                    if nxt < len(candidates):
                        weights[nxt] *= 1.0 + self.successor_boost
                weights[seen[candidates]] = 0.0
                pick = int(candidates[rng.choice(len(candidates), p=weights / weights.sum())])
                seen[pick] = True
                previous = pick
                clock += gaps[step]
                users.append(f"u{u}")
                items.append(pick)
                times.append(round(clock, 3))

        interactions = pd.DataFrame({
            "user": pd.Series(users, dtype=str),
            "item": pd.Series([item_ids[i] for i in items], dtype=str),
            "timestamp": np.asarray(times, dtype=np.float64),
        })
        interactions = interactions.sort_values("timestamp", kind="stable", ignore_index=True)
        return InteractionData(interactions=interactions, titles=titles)
