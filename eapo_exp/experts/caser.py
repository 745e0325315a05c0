"""Caser (Tang & Wang, 2018): horizontal and vertical convolutions over the history matrix."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eapo_exp.experts.base import FastDropout, SequentialExpert, fit_length


class Caser(SequentialExpert):
    """The history (cropped / left-padded to `max_len`) is an L x d image. Horizontal filters
    of every height 1..L (`num_horizontal` each) are max-pooled over time; `num_vertical`
    vertical filters of height L weight the positions. Both feed a dense layer to d.

    No user embedding (unlike the original): the expert must score users it never saw.
    The filters are `nn.Conv2d` parameters (the paper's shapes) applied as the equivalent
    `conv1d` over the embedding channels, about twice as fast on CPU.
    """

    def __init__(self, num_items: int, max_len: int = 10, hidden_size: int = 64,
                 num_horizontal: int = 16, num_vertical: int = 4, dropout: float = 0.2) -> None:
        super().__init__(num_items, hidden_size)
        self.init_kwargs = {"num_items": num_items, "max_len": max_len,
                            "hidden_size": hidden_size, "num_horizontal": num_horizontal,
                            "num_vertical": num_vertical, "dropout": dropout}
        self.max_len = max_len
        self.horizontal = nn.ModuleList(
            nn.Conv2d(1, num_horizontal, kernel_size=(height, hidden_size))
            for height in range(1, max_len + 1))
        self.vertical = nn.Conv2d(1, num_vertical, kernel_size=(max_len, 1))
        self.dropout = FastDropout(dropout)
        self.dense = nn.Linear(num_horizontal * max_len + num_vertical * hidden_size,
                               hidden_size)

    def encode(self, histories: torch.Tensor) -> torch.Tensor:
        histories = fit_length(histories, self.max_len)
        emb = self.item_embedding(histories)                                # [B, L, d]
        length = emb.shape[1]
        # vertical: out[b, v, j] = sum_t W[v, t] emb[b, t, j] + bias[v]
        vertical = torch.einsum("vt,btd->bvd", self.vertical.weight.view(-1, length), emb)
        vertical = (vertical + self.vertical.bias.view(1, -1, 1)).flatten(1)  # [B, n_v * d]
        series = emb.transpose(1, 2)                                       # [B, d, L]
        horizontal = []
        for conv in self.horizontal:  # a (h x d) Conv2d filter is a width-h Conv1d over d
            weight = conv.weight.squeeze(1).transpose(1, 2)                # [n_h, d, h]
            out = F.conv1d(series, weight, conv.bias)                       # [B, n_h, T]
            horizontal.append(F.relu(out).amax(dim=2))                      # [B, n_h]
        features = torch.cat([vertical, *horizontal], dim=1)
        return F.relu(self.dense(self.dropout(features)))
