"""The shape every expert shares: encode a history, score candidates by dot product.

Histories are LongTensor[B, L], LEFT-padded with 0 (padding), oldest item first, so the
last column holds the most recent item. A row may be all padding (a user with no history
yet); every expert returns a finite representation for it.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

PADDING = 0


def pad_histories(histories: Sequence[Sequence[int]], max_len: int) -> torch.LongTensor:
    """Left-pad (with 0) each history to `max_len`, keeping its `max_len` most recent items."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    out = torch.zeros(len(histories), max_len, dtype=torch.long)
    for row, history in enumerate(histories):
        recent = list(history)[-max_len:]
        if recent:
            out[row, max_len - len(recent):] = torch.as_tensor(recent, dtype=torch.long)
    return out


def fit_length(histories: torch.Tensor, length: int) -> torch.Tensor:
    """Crop (keep the most recent columns) or left-pad with 0 a [B, L] batch to [B, length]."""
    current = histories.shape[1]
    if current == length:
        return histories
    if current > length:
        return histories[:, current - length:]
    pad = histories.new_zeros(histories.shape[0], length - current)
    return torch.cat([pad, histories], dim=1)


def fast_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout drawing 8 random bytes per 64-bit draw (about 3x faster than
    `F.dropout` on CPU, where Bernoulli sampling dominates a small expert's step).

    The drop probability is rounded to a multiple of 1/256; the kept values are scaled by
    the exact inverse keep rate, so the expectation is unchanged.
    """
    if not training or p <= 0.0:
        return x
    if p >= 1.0:
        return torch.zeros_like(x)
    threshold = round(p * 256)
    if threshold == 0:
        return x
    n = x.numel()
    draws = torch.randint(-(2 ** 63), 2 ** 63 - 1, ((n + 7) // 8,), dtype=torch.int64,
                          device=x.device)
    keep = draws.view(torch.uint8)[:n].view(x.shape) >= threshold
    scale = 256.0 / (256 - threshold)
    return x * keep.to(x.dtype).mul_(scale)


class FastDropout(nn.Module):
    """`nn.Dropout` with `fast_dropout` (same interface, p rounded to 1/256)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SequentialExpert(nn.Module, abc.ABC):
    """A next-item recommender over dense item ids 1..num_items (0 is padding).

    Subclasses implement `encode`; scoring is the dot product of the user representation
    with the shared item embedding. Every subclass stores its constructor arguments in
    `self.init_kwargs` so `load_expert` can rebuild it from `expert.json`.
    """

    init_kwargs: dict[str, Any]

    def __init__(self, num_items: int, hidden_size: int) -> None:
        super().__init__()
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        if hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1, got {hidden_size}")
        self.num_items = int(num_items)
        self.hidden_size = int(hidden_size)
        self.item_embedding = nn.Embedding(num_items + 1, hidden_size, padding_idx=PADDING)
        nn.init.normal_(self.item_embedding.weight, std=hidden_size ** -0.5)
        with torch.no_grad():
            self.item_embedding.weight[PADDING].zero_()

    @abc.abstractmethod
    def encode(self, histories: torch.Tensor) -> torch.Tensor:
        """histories LongTensor[B, L] (left-padded) -> user representation FloatTensor[B, d]."""

    def score(self, histories: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Scores FloatTensor[B, C] of candidates LongTensor[B, C] given histories [B, L]."""
        user = self.encode(histories)                      # [B, d]
        items = self.item_embedding(candidates)            # [B, C, d]
        return torch.einsum("bd,bcd->bc", user, items)

    def full_logits(self, histories: torch.Tensor) -> torch.Tensor:
        """Logits over every item id [B, num_items + 1]; column 0 (padding) is -inf."""
        logits = self.encode(histories) @ self.item_embedding.weight.T
        logits[:, PADDING] = float("-inf")
        return logits

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.init_kwargs.items())
