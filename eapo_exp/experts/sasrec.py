"""SASRec (Kang & McAuley, 2018): causal self-attention over the item history."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eapo_exp.experts.base import PADDING, SequentialExpert, fit_length


class _Block(nn.Module):
    """Pre-LN transformer block as in SASRec: LN -> attention -> residual, LN -> FFN -> residual."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.attn_norm = nn.LayerNorm(hidden_size, eps=1e-8)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=1e-8)
        self.ffn = nn.Sequential(
            nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden_size, hidden_size), nn.Dropout(dropout),
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        h = self.attn_norm(x)
        q, k, v = self.qkv(h).view(b, length, 3, self.num_heads, d // self.num_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))   # [B, heads, L, d_head]
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.out(attn.transpose(1, 2).reshape(b, length, d)))
        return x + self.ffn(self.ffn_norm(x))


class SASRec(SequentialExpert):
    """Self-attentive sequential recommender; the user representation is the output at the
    last (most recent) position.

    Inputs are cropped / left-padded to `max_len` columns. Attention is causal and never
    looks at padding keys (each padding position attends only to itself, so an all-padding
    row stays finite); padding positions are zeroed after every block. Together this makes
    a history's representation independent of how much left padding it carries.
    """

    def __init__(self, num_items: int, max_len: int = 10, hidden_size: int = 64,
                 num_layers: int = 2, num_heads: int = 2, dropout: float = 0.2) -> None:
        super().__init__(num_items, hidden_size)
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} not divisible by num_heads {num_heads}")
        self.init_kwargs = {"num_items": num_items, "max_len": max_len, "hidden_size": hidden_size,
                                "num_layers": num_layers, "num_heads": num_heads, "dropout": dropout}
        self.max_len = max_len
        self.position_embedding = nn.Embedding(max_len, hidden_size)
        self.input_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(hidden_size, num_heads, dropout)
                                    for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(hidden_size, eps=1e-8)
        causal = torch.tril(torch.ones(max_len, max_len, dtype=torch.bool))
        self.register_buffer("causal", causal, persistent=False)
        self.register_buffer("eye", torch.eye(max_len, dtype=torch.bool), persistent=False)

    def encode(self, histories: torch.Tensor) -> torch.Tensor:
        histories = fit_length(histories, self.max_len)
        real = histories != PADDING                                    # [B, L]
        positions = torch.arange(self.max_len, device=histories.device)
        x = self.item_embedding(histories) * self.hidden_size ** 0.5
        x = self.input_dropout(x + self.position_embedding(positions))
        keep = real.unsqueeze(-1).to(x.dtype)
        x = x * keep
        # query i may attend key j when j <= i and j is a real item; always to itself.
        mask = (self.causal & real[:, None, :]) | self.eye               # [B, L, L]
        mask = mask.unsqueeze(1)                                         # [B, 1, L, L]
        for block in self.blocks:
            x = block(x, mask) * keep
        return self.final_norm(x[:, -1])
