"""Most-popular baseline: scores a candidate by how often it occurs in training."""

from __future__ import annotations

import itertools

import numpy as np
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
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        self.num_items = int(num_items)
        self.init_kwargs = {"num_items": num_items}
        self.register_buffer("counts", torch.zeros(num_items + 1, dtype=torch.float32))

    def fit(self, train) -> PopularityRanker:
        """Count items of a training split (a `datasets.Dataset` or a list of sample dicts)."""
        if hasattr(train, "select_columns"):
            names = [c for c in ("user", "history", "target") if c in train.column_names]
            cols = train.select_columns(names)[:]
        else:
            rows = list(train)
            names = [c for c in ("user", "history", "target") if rows and c in rows[0]]
            cols = {name: [row[name] for row in rows] for name in names}
        histories, targets = cols.get("history", []), cols.get("target", [])
        lengths = np.fromiter((len(h) + 1 for h in histories), dtype=np.int64,
                              count=len(histories))
        items = np.fromiter(itertools.chain.from_iterable(
            (*h, t) for h, t in zip(histories, targets, strict=True)), dtype=np.int64)
        if items.size and (items.min() < 0 or items.max() > self.num_items):
            raise ValueError(f"training items must be ids in 0..{self.num_items}")
        if "user" in cols:
            _, user_codes = np.unique(np.asarray(cols["user"], dtype=object).astype(str),
                                      return_inverse=True)
            pairs = np.unique(np.repeat(user_codes, lengths) * (self.num_items + 1) + items)
            items = pairs % (self.num_items + 1)
        counts = np.bincount(items, minlength=self.num_items + 1).astype(np.float32)
        counts[0] = 0.0  # padding
        self.counts.copy_(torch.from_numpy(counts))
        return self

    def score(self, histories: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        del histories  # popularity ignores the history
        return self.counts[candidates]
