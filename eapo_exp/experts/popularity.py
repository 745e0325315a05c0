"""Most-popular baseline: scores a candidate by how often it occurs in training."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn


class PopularityRanker(nn.Module):
    """Scores every candidate by its training frequency, whatever the history.

    `fit` counts each (user, item) pair of the training split once: an item in a user's
    training histories or targets counts 1 for that user. (The samples are sliding windows,
    so counting raw occurrences would weight items by their position in users' sequences.)
    Without a `user` column every occurrence counts. Ties stay ties (no tie-break); the
    metrics rank ties pessimistically.

    Not trained by gradient; an `nn.Module` only so that `.to()`, `.eval()`, `state_dict`
    and `save_expert` / `load_expert` work as for the neural experts.
    """

    def __init__(self, num_items: int) -> None:
        super().__init__()
        self.num_items = int(num_items)
        self.init_kwargs = {"num_items": num_items}
        self.register_buffer("counts", torch.zeros(num_items + 1, dtype=torch.float32))

    def fit(self, train) -> PopularityRanker:
        """Count items of a training split (a `datasets.Dataset` or a list of sample dicts)."""
        if hasattr(train, "column_names"):
            users = train["user"] if "user" in train.column_names else None
            rows = zip(train["history"], train["target"], strict=True)
        else:
            users = [row["user"] for row in train] if train and "user" in train[0] else None
            rows = ((row["history"], row["target"]) for row in train)
        self.counts.copy_(torch.as_tensor(self._count(rows, users), dtype=torch.float32))
        return self

    def _count(self, rows: Iterable[tuple[Sequence[int], int]], users) -> list[float]:
        counts = [0.0] * (self.num_items + 1)
        if users is None:
            for history, target in rows:
                for item in history:
                    counts[item] += 1
                counts[target] += 1
        else:
            seen: dict[object, set[int]] = {}
            for user, (history, target) in zip(users, rows, strict=True):
                seen.setdefault(user, set()).update(history, (target,))
            for items in seen.values():
                for item in items:
                    counts[item] += 1
        counts[0] = 0.0
        return counts

    def score(self, histories: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        del histories  # popularity ignores the history
        return self.counts[candidates]
