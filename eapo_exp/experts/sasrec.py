"""SASRec (Kang & McAuley, 2018): causal self-attention over the item history."""

from __future__ import annotations

import torch
from torch import nn

from eapo_exp.experts.base import PADDING, FastDropout, SequentialExpert, fit_length


class _Block(nn.Module):
    """Pre-LN block as in SASRec: LN -> attention -> residual, LN -> FFN -> residual.

    Dropout as in the reference implementation: on the attention weights and inside the FFN.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attn_norm = nn.LayerNorm(hidden_size, eps=1e-8)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.attn_dropout = FastDropout(dropout)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=1e-8)
        self.ffn = nn.Sequential(
            nn.Linear(hidden_size, hidden_size), nn.ReLU(), FastDropout(dropout),
            nn.Linear(hidden_size, hidden_size), FastDropout(dropout),
        )

    def forward(self, x: torch.Tensor, blocked: torch.Tensor,
                last_only: bool = False) -> torch.Tensor:
        """x [B, L, d]; blocked [B, 1, L, L] True where a query must not see a key.

        With `last_only` only the last position is computed (returns [B, 1, d]).
        """
        b, length, d = x.shape
        head = d // self.num_heads
        q, k, v = (self.qkv(self.attn_norm(x)).view(b, length, 3, self.num_heads, head)
                   .permute(2, 0, 3, 1, 4))                        # each [B, heads, L, head]
        if last_only:
            x, q, blocked = x[:, -1:], q[:, :, -1:], blocked[:, :, -1:]
        weights = (q @ k.transpose(-1, -2)) * head ** -0.5
        weights = self.attn_dropout(weights.masked_fill(blocked, float("-inf")).softmax(-1))
        attn = (weights @ v).transpose(1, 2).reshape(b, q.shape[2], d)
        x = x + self.out(attn)
        return x + self.ffn(self.ffn_norm(x))


class SASRec(SequentialExpert):
    """Self-attentive sequential recommender; the user representation is the output at the
    last (most recent) position.

    Inputs are cropped / left-padded to `max_len` columns. Attention is causal and never
    looks at padding keys (each padding position attends only to itself, so an all-padding
    row stays finite), so padding never reaches a real position and a history's
    representation does not depend on how much left padding it carries. The last block
    computes only the last position, the one that is read out.
    """

    def __init__(self, num_items: int, max_len: int = 10, hidden_size: int = 64,
                 num_layers: int = 2, num_heads: int = 2, dropout: float = 0.2) -> None:
        super().__init__(num_items, hidden_size)
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} not divisible by num_heads {num_heads}")
        self.init_kwargs = {"num_items": num_items, "max_len": max_len,
                            "hidden_size": hidden_size, "num_layers": num_layers,
                            "num_heads": num_heads, "dropout": dropout}
        self.max_len = max_len
        self.position_embedding = nn.Embedding(max_len, hidden_size)
        self.input_dropout = FastDropout(dropout)
        self.blocks = nn.ModuleList(_Block(hidden_size, num_heads, dropout)
                                    for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(hidden_size, eps=1e-8)
        causal = torch.tril(torch.ones(max_len, max_len, dtype=torch.bool))
        self.register_buffer("causal", causal, persistent=False)
        self.register_buffer("eye", torch.eye(max_len, dtype=torch.bool), persistent=False)

    def encode(self, histories: torch.Tensor) -> torch.Tensor:
        histories = fit_length(histories, self.max_len)
        real = histories != PADDING                                    # [B, L]
        x = self.item_embedding(histories) * self.hidden_size ** 0.5
        x = self.input_dropout(x + self.position_embedding.weight)
        x = x * real.unsqueeze(-1).to(x.dtype)
        # query i may attend key j when j <= i and j is a real item; always to itself.
        allowed = (self.causal & real[:, None, :]) | self.eye           # [B, L, L]
        blocked = ~allowed.unsqueeze(1)                                  # [B, 1, L, L]
        for i, block in enumerate(self.blocks):
            x = block(x, blocked, last_only=i == len(self.blocks) - 1)
        return self.final_norm(x[:, -1])
