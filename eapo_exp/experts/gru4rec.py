"""GRU4Rec (Hidasi et al., 2016): a GRU over the item history."""

from __future__ import annotations

import torch
from torch import nn

from eapo_exp.experts.base import PADDING, FastDropout, SequentialExpert


def left_to_right_padded(histories: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the real items of left-padded rows to the front. Returns (rows, lengths).

    The length of a row counts from its first real item to the end (rows are left-padded).
    """
    _batch, length = histories.shape
    real = histories != PADDING
    # index of the first real item (argmax returns the first maximum); `length` when none
    first = torch.where(real.any(1), real.float().argmax(1), length)
    lengths = length - first                                              # [B]
    index = torch.arange(length, device=histories.device).unsqueeze(0) + first.unsqueeze(1)
    valid = index < length
    shifted = torch.gather(histories, 1, index.clamp(max=length - 1))
    return torch.where(valid, shifted, torch.zeros_like(shifted)), lengths


class GRU4Rec(SequentialExpert):
    """The user representation is the last layer's hidden state after the most recent item.

    Rows are re-aligned so the real items come first and the state is read right after the
    most recent one, so left padding never enters the GRU and does not change a history's
    representation (an all-padding row reads the state after one padding step). This is
    exact and cheaper on CPU than packed sequences.
    """

    def __init__(self, num_items: int, hidden_size: int = 64, num_layers: int = 1,
                 dropout: float = 0.2) -> None:
        super().__init__(num_items, hidden_size)
        self.init_kwargs = {"num_items": num_items, "hidden_size": hidden_size,
                                "num_layers": num_layers, "dropout": dropout}
        self.input_dropout = FastDropout(dropout)
        self.gru = nn.GRU(hidden_size, hidden_size, num_layers=num_layers, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)
        self.dense = nn.Linear(hidden_size, hidden_size)

    def encode(self, histories: torch.Tensor) -> torch.Tensor:
        rows, lengths = left_to_right_padded(histories)
        x = self.input_dropout(self.item_embedding(rows))
        outputs, _ = self.gru(x)                                            # [B, L, d]
        last = (lengths.clamp(min=1) - 1).view(-1, 1, 1).expand(-1, 1, outputs.shape[2])
        return self.dense(outputs.gather(1, last).squeeze(1))
