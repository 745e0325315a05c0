"""GRU4Rec (Hidasi et al., 2016): a GRU over the item history."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from eapo_exp.experts.base import PADDING, SequentialExpert


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

    The GRU runs over the real items only (packed sequences), so left padding does not
    change a history's representation; an all-padding row runs one padding step.
    """

    def __init__(self, num_items: int, hidden_size: int = 64, num_layers: int = 1,
                 dropout: float = 0.2) -> None:
        super().__init__(num_items, hidden_size)
        self.init_kwargs = {"num_items": num_items, "hidden_size": hidden_size,
                                "num_layers": num_layers, "dropout": dropout}
        self.input_dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(hidden_size, hidden_size, num_layers=num_layers, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)
        self.dense = nn.Linear(hidden_size, hidden_size)

    def encode(self, histories: torch.Tensor) -> torch.Tensor:
        rows, lengths = left_to_right_padded(histories)
        x = self.input_dropout(self.item_embedding(rows))
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True,
                                      enforce_sorted=False)
        _, hidden = self.gru(packed)                                        # [layers, B, d]
        return self.dense(hidden[-1])
