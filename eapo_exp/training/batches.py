"""Deterministic micro-batch schedule: which samples go into micro-batch g of a run.

Sample order is a fresh seeded permutation each epoch, so micro-batch g (and the prompt
template, drawn per (sample, epoch)) depends only on (seed, g). A resumed run therefore
sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import numpy as np


class MicroBatchSchedule:
    def __init__(self, num_samples: int, batch_size: int, seed: int) -> None:
        if num_samples < 1:
            raise ValueError("no training samples")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(
                self.num_samples)
        return self._perms[epoch]

    def micro_batch(self, index: int) -> list[tuple[int, int]]:
        """(sample position, epoch) pairs of global micro-batch `index`."""
        start = index * self.batch_size
        out = []
        for flat in range(start, start + self.batch_size):
            epoch, offset = divmod(flat, self.num_samples)
            out.append((int(self._perm(epoch)[offset]), epoch))
        return out


def subset_indices(total: int, limit: int, seed: int) -> list[int]:
    """A seeded subset of `limit` row indices (all rows when limit <= 0 or >= total), sorted."""
    if limit <= 0 or limit >= total:
        return list(range(total))
    return sorted(np.random.default_rng(seed).choice(total, size=limit, replace=False).tolist())
