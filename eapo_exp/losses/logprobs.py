"""Per-token log-probs from LM logits without a float32 copy of the whole [B, R, V] tensor.

`log_softmax(logits.float())` on a 128k-vocabulary model over long packed rows
materialises (and autograd keeps for backward) a float32 copy several times the size of the
bf16 logits. Here the log-normaliser is computed in float32 one block of rows at a time, and
the backward recomputes each block's softmax from the logits in their own dtype, so at most
one block exists in float32 at any time. Values and gradients equal the plain computation
up to float rounding.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

# Elements of one float32 block. On a GPU: 2**27 floats = 512 MiB, ~1k rows of a 128k
# vocabulary, ~2.7k rows of a 49k one (few blocks, few kernel launches). On a CPU: 4 MiB, ~21
# rows of a 49k vocabulary, that stay in cache. logsumexp allocates x - max and its exp at the
# block's full size; 512 MiB temporaries are fresh pages written through to memory every
# call: scoring 4 prompts x 21 candidates (4 x 316 rows of SmolLM2's vocabulary) spent
# 0.50-0.69 s here against 0.06-0.08 s in 4 MiB blocks (2-core CPU, float32; same values).
BLOCK_ELEMENTS = 1 << 27
CPU_BLOCK_ELEMENTS = 1 << 20


def _blocks(batch: int, rows: int, per_block: int) -> Iterator[tuple[int, int, int, int]]:
    """(b0, b1, r0, r1) tiles of the [batch, rows] grid with at most per_block cells each."""
    if rows <= per_block:
        step = max(1, per_block // max(rows, 1))
        for b0 in range(0, batch, step):
            yield b0, min(b0 + step, batch), 0, rows
        return
    for b in range(batch):
        for r0 in range(0, rows, per_block):
            yield b, b + 1, r0, min(r0 + per_block, rows)


def _rows_per_block(vocab: int, block_rows: int | None, device: torch.device) -> int:
    if block_rows:
        return max(1, block_rows)
    elements = CPU_BLOCK_ELEMENTS if device.type == "cpu" else BLOCK_ELEMENTS
    return max(1, elements // max(vocab, 1))


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, pred: Tensor, tgt: Tensor, per_block: int) -> Tensor:
        batch, rows, _ = logits.shape
        lse = torch.empty(batch, rows, dtype=torch.float32, device=logits.device)
        for b0, b1, r0, r1 in _blocks(batch, rows, per_block):
            lse[b0:b1, r0:r1] = torch.logsumexp(logits[b0:b1, r0:r1].float(), dim=-1)
        b_idx = torch.arange(batch, device=logits.device)[:, None]
        out = logits[b_idx, pred, tgt].float() - lse[b_idx, pred]
        ctx.save_for_backward(logits, pred, tgt, lse)
        ctx.per_block = per_block
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        logits, pred, tgt, lse = ctx.saved_tensors
        batch, rows, _ = logits.shape
        grad_out = grad_out.float()
        # d out[b, i] / d logits[b, r, v] = [r == pred, v == tgt] - [r == pred] softmax[b, r, v]
        row_grad = torch.zeros(batch, rows, dtype=torch.float32, device=logits.device)
        row_grad.scatter_add_(1, pred, grad_out)
        b_all = torch.arange(batch, device=logits.device)[:, None].expand_as(pred)
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        for b0, b1, r0, r1 in _blocks(batch, rows, ctx.per_block):
            block = torch.exp(logits[b0:b1, r0:r1].float() - lse[b0:b1, r0:r1, None])
            block.mul_(row_grad[b0:b1, r0:r1, None].neg())
            inside = (b_all >= b0) & (b_all < b1) & (pred >= r0) & (pred < r1)
            block.index_put_((b_all[inside] - b0, pred[inside] - r0, tgt[inside]),
                             grad_out[inside], accumulate=True)
            grad[b0:b1, r0:r1] = block
        return grad, None, None, None


def token_logprobs(logits: Tensor, pred: Tensor, tgt: Tensor, *,
                   block_rows: int | None = None) -> Tensor:
    """log_softmax(logits[b, pred[b, i]])[tgt[b, i]] for every (b, i), as float32 [B, C].

    logits: [B, R, V] in any float dtype (a strided view is fine); pred, tgt: [B, C] long.
    block_rows: rows of logits converted to float32 at once (default: BLOCK_ELEMENTS / V on a
    GPU, CPU_BLOCK_ELEMENTS / V on a CPU).
    Differentiable with respect to logits.
    """
    if logits.dim() != 3 or pred.shape != tgt.shape or pred.shape[0] != logits.shape[0]:
        raise ValueError(f"token_logprobs: logits {tuple(logits.shape)}, pred "
                         f"{tuple(pred.shape)} and tgt {tuple(tgt.shape)} do not fit")
    if logits.numel() == 0 or pred.numel() == 0:
        return logits.new_zeros(pred.shape, dtype=torch.float32) + logits.sum() * 0
    per_block = _rows_per_block(logits.shape[-1], block_rows, logits.device)
    return _TokenLogprobs.apply(logits, pred.long(), tgt.long(), per_block)
