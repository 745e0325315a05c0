"""`grouped_bmm`: an attention implementation for CPU training with an arbitrary mask.

torch's CPU scaled_dot_product_attention with a mask runs its flash kernel, which spends
most of its time outside the matrix multiplies (bf16, SmolLM2 shapes, 4 x 380 tokens, one
core: ~25 ms forward, ~80 ms forward + backward per layer, against ~5 ms of matmul work). This one is the plain formula on batched matmuls:

    softmax(q k^T * scale + bias) v

with grouped-query attention folded into the matmul (the G query heads that share a key
head are stacked as G x T rows against the same keys, so k and v are never repeated), the
softmax taken in the model dtype by torch's vectorised kernel (it accumulates in float32),
and the mask applied as an additive bias (0 where allowed, the dtype's minimum elsewhere)
built by transformers' eager mask function, or by the shared-prompt packer, once per
forward and shared by every layer. In a causal layer the queries go in blocks of 128, each
against the keys up to its last position only (the keys after it are masked anyway), which
skips a third or more of the work at these lengths and keeps the score blocks in cache.
The backward is written out (BlockedAttention): matmuls and one softmax backward per block,
the key and value gradients of all blocks added into one buffer by the matmuls themselves.
Without autograd (scoring, reference log-probs) blocks of 64 queries go over only the keys
that some query of the block may see (`_attention_over_live_keys`): when 21 candidate titles
follow one prompt, a title's queries skip the other titles' keys.

Registered with transformers under ATTENTION_NAME (load a model with
`attn_implementation="grouped_bmm"`, or `backbone.loader.attn_implementation=grouped_bmm`).
"""

from __future__ import annotations

import torch

ATTENTION_NAME = "grouped_bmm"
QUERY_BLOCK = 128  # queries per block of the causal split (measured: 64-256 all close)


# Run eager under torch.compile (a graph break around the call): compiled, the block count
# would be specialised (each new count compiling the layer again), and a single block over
# all keys made inductor's fused softmax the slowest kernel of the layer at ~640 tokens.
@torch.compiler.disable
def grouped_bmm_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, scaling: float | None = None,
                          dropout: float = 0.0, **kwargs) -> tuple[torch.Tensor, None]:
    """query [B, H, Tq, D], key/value [B, KV, Tk, D], attention_mask an additive float mask
    broadcastable to [B, 1, Tq, Tk] (or a bool mask, True = allowed) or None (causal,
    aligned at the end) -> ([B, Tq, H, D], None), the layout transformers expects."""
    if kwargs.get("softcap") is not None or kwargs.get("sliding_window") is not None:
        raise ValueError(f"{ATTENTION_NAME} attention supports neither softcap nor sliding "
                         "windows; use attn_implementation=eager or sdpa for this model")
    q_len, dim = query.shape[2], query.shape[3]
    k_len = key.shape[2]
    scale = dim ** -0.5 if scaling is None else scaling
    bias = _bias(attention_mask, q_len, k_len, query.dtype, query.device)
    drop = dropout if module is not None and module.training else 0.0
    # A causal layer never lets a query see a later key: a block of queries needs only the
    # keys up to its last position, which skips ~1/3 of the work at these lengths.
    causal = module is None or getattr(module, "is_causal", False)
    block = QUERY_BLOCK if causal else q_len
    if drop:
        return _attention_with_dropout(query, key, value, bias, scale, block, causal, drop), None
    if (causal and attention_mask is not None and q_len == k_len
            and not torch.is_grad_enabled()):
        plan = _live_key_plan(attention_mask, bias)
        return _attention_over_live_keys(query, key, value, scale, plan), None
    return BlockedAttention.apply(query, key, value, bias, scale, block, causal), None


def _blocks(q_len: int, k_len: int, block: int, causal: bool):
    """(first query, end query, keys seen) of each query block."""
    for start in range(0, q_len, block):
        end = min(start + block, q_len)
        yield start, end, (k_len - q_len + end if causal else k_len)


def _stack_queries(query: torch.Tensor, kv_heads: int, start: int, end: int) -> torch.Tensor:
    """Rows start:end of query [B, H, T, D] as [B*KV, G*rows, D]: the G query heads of a key
    head stacked into one matmul against its keys."""
    bsz, heads, _, dim = query.shape
    rows = query[:, :, start:end].reshape(bsz, kv_heads, heads // kv_heads, end - start, dim)
    return rows.reshape(bsz * kv_heads, -1, dim)


def _to_output_rows(out: torch.Tensor, rows: torch.Tensor, start: int, end: int) -> None:
    """Write a block's rows [B*KV, G*rows, D] into out [B, T, H, D] at rows start:end."""
    bsz, _, heads, dim = out.shape
    out[:, start:end].copy_(rows.view(bsz, heads, end - start, dim).transpose(1, 2))


class BlockedAttention(torch.autograd.Function):
    """softmax(q k^T * scale + bias) v over causal query blocks, with a hand-written backward.

    Autograd through the same formula slices the keys and values per block, so their
    gradients are accumulated through zero-filled full-size tensors, and it keeps every
    block's stacked query copy and a scaled query. Here the key and value gradients of
    every block are added by the matmul itself (baddbmm, beta = 1) into one buffer, the
    scale rides on the matmuls' alpha, and the output is written straight into the
    [B, T, H, D] layout. Saved for the backward: q, k, v and each block's softmax weights,
    as autograd saves."""

    @staticmethod
    def forward(ctx, query, key, value, bias, scale: float, block: int, causal: bool):
        bsz, heads, q_len, dim = query.shape
        kv_heads, k_len = key.shape[1], key.shape[2]
        groups = heads // kv_heads
        keys_flat = key.reshape(bsz * kv_heads, k_len, dim)
        values_flat = value.reshape(bsz * kv_heads, k_len, dim)
        out = query.new_empty(bsz, q_len, heads, dim)
        weights = []
        for start, end, seen in _blocks(q_len, k_len, block, causal):
            rows = _stack_queries(query, kv_heads, start, end)
            scores = torch.baddbmm(rows.new_empty(()), rows, keys_flat[:, :seen].transpose(1, 2),
                                   beta=0.0, alpha=scale)
            scores.view(bsz, kv_heads, groups, end - start, seen).add_(
                bias[:, :, None, start:end, :seen])
            probs = torch.softmax(scores, dim=-1)
            weights.append(probs)
            _to_output_rows(out, torch.bmm(probs, values_flat[:, :seen]), start, end)
        ctx.save_for_backward(query, key, value, *weights)
        ctx.scale, ctx.block, ctx.causal = scale, block, causal
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, *weights = ctx.saved_tensors
        scale, block, causal = ctx.scale, ctx.block, ctx.causal
        bsz, heads, q_len, dim = query.shape
        kv_heads, k_len = key.shape[1], key.shape[2]
        groups = heads // kv_heads
        keys_flat = key.reshape(bsz * kv_heads, k_len, dim)
        values_flat = value.reshape(bsz * kv_heads, k_len, dim)
        grad_query = torch.empty_like(query)
        grad_key = torch.zeros(bsz * kv_heads, k_len, dim, dtype=key.dtype, device=key.device)
        grad_value = torch.zeros_like(grad_key)
        grad_rows = grad_out.transpose(1, 2)  # [B, H, T, D], a view
        for (start, end, seen), probs in zip(_blocks(q_len, k_len, block, causal), weights):
            d_out = _stack_queries(grad_rows, kv_heads, start, end)
            grad_value[:, :seen].baddbmm_(probs.transpose(1, 2), d_out)
            d_probs = torch.bmm(d_out, values_flat[:, :seen].transpose(1, 2))
            d_scores = torch._softmax_backward_data(d_probs, probs, -1, probs.dtype)
            rows = _stack_queries(query, kv_heads, start, end)
            grad_key[:, :seen].baddbmm_(d_scores.transpose(1, 2), rows, alpha=scale)
            d_rows = torch.baddbmm(d_scores.new_empty(()), d_scores, keys_flat[:, :seen],
                                   beta=0.0, alpha=scale)
            grad_query[:, :, start:end].copy_(
                d_rows.view(bsz, kv_heads, groups, end - start, dim)
                .reshape(bsz, heads, end - start, dim))
        return (grad_query, grad_key.view_as(key), grad_value.view_as(value),
                None, None, None, None)


# Scoring packs many short completions after one prompt: a completion's queries see the
# prompt and their own completion, so most keys between are masked for a whole block of
# them. Without autograd, blocks of 64 queries go over only the keys that some query of the
# block may see (measured on a 4 x 724-token score batch, one layer: 15.4 ms in blocks of 128
# over every causal key, 11.9 ms here).
LIVE_KEY_BLOCK = 64
_plan_cache: list = []  # [(mask, signature, plan)]: one forward's mask, shared by its layers


def _live_key_plan(mask: torch.Tensor, bias: torch.Tensor) -> list:
    """Per query block: (start, end, key indices or None for all keys up to `end`, the
    block's bias over those keys). Computed once per mask and reused by every layer; the
    mask is kept referenced, so no other tensor can take its memory while the plan is
    cached."""
    signature = (mask.data_ptr(), tuple(mask.shape), mask.stride(), mask.dtype,
                 mask._version, tuple(bias.shape), bias.dtype, LIVE_KEY_BLOCK)
    if _plan_cache and _plan_cache[0][1] == signature:
        return _plan_cache[0][2]
    q_len = bias.shape[2]
    allowed = bias > torch.finfo(bias.dtype).min
    plan = []
    for start in range(0, q_len, LIVE_KEY_BLOCK):
        end = min(start + LIVE_KEY_BLOCK, q_len)
        block = allowed[:, :, start:end, :end]
        live = block.flatten(0, 2).any(0)
        keys = live.nonzero().squeeze(1)
        # A row that may see no key gets uniform weights over every key, as the dense path
        # gives it; so do blocks where skipping would save little.
        if keys.numel() > 0.9 * end or not bool(block.any(-1).all()):
            plan.append((start, end, None, bias[:, :, start:end, :end]))
        else:
            plan.append((start, end, keys,
                         bias[:, :, start:end, :end].index_select(-1, keys).contiguous()))
    _plan_cache[:] = [(mask, signature, plan)]
    return plan


def _attention_over_live_keys(query, key, value, scale: float, plan: list) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v, each query block over its live keys only (no
    autograd). A key masked for every query of a block has weight exactly 0 there."""
    bsz, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    keys_flat = key.reshape(bsz * kv_heads, -1, dim)
    values_flat = value.reshape(bsz * kv_heads, -1, dim)
    out = query.new_empty(bsz, q_len, heads, dim)
    for start, end, keys, bias in plan:
        rows = _stack_queries(query, kv_heads, start, end)
        if keys is None:
            block_keys, block_values = keys_flat[:, :end], values_flat[:, :end]
        else:
            block_keys = keys_flat.index_select(1, keys)
            block_values = values_flat.index_select(1, keys)
        scores = torch.baddbmm(rows.new_empty(()), rows, block_keys.transpose(1, 2),
                               beta=0.0, alpha=scale)
        scores.view(bsz, kv_heads, groups, end - start, -1).add_(bias[:, :, None])
        _to_output_rows(out, torch.bmm(torch.softmax(scores, dim=-1), block_values),
                        start, end)
    return out


def _attention_with_dropout(query, key, value, bias, scale: float, block: int, causal: bool,
                            dropout: float) -> torch.Tensor:
    """The same blocks through autograd, with dropout on the attention weights."""
    bsz, heads, q_len, dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    keys_flat = key.reshape(bsz * kv_heads, k_len, dim)
    scaled = query * scale
    pieces = []
    for start, end, seen in _blocks(q_len, k_len, block, causal):
        rows = _stack_queries(scaled, kv_heads, start, end)
        scores = torch.bmm(rows, keys_flat[:, :seen].transpose(1, 2))
        scores = scores.view(bsz, kv_heads, heads // kv_heads, end - start, seen) + \
            bias[:, :, None, start:end, :seen]
        probs = torch.nn.functional.dropout(torch.softmax(scores, dim=-1), p=dropout)
        pieces.append(torch.matmul(probs, value[:, :, None, :seen]))  # [B, KV, G, rows, D]
    out = torch.cat(pieces, dim=3).view(bsz, heads, q_len, dim)
    return out.transpose(1, 2).contiguous()


def _bias(mask: torch.Tensor | None, q_len: int, k_len: int, dtype: torch.dtype,
          device: torch.device) -> torch.Tensor:
    """An additive [B|1, 1, Tq, Tk] bias in `dtype`."""
    if mask is None:  # causal, queries aligned with the last keys (a KV cache before them)
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)
        mask = allowed[None, None]
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill_(
            ~mask, torch.finfo(dtype).min)
    mask = mask[..., :k_len]
    return mask if mask.dtype == dtype else mask.to(dtype)


def resolve_attention(name: str | None, on_cuda: bool) -> str | None:
    """The attention implementation to load a model with: `auto` is grouped_bmm on a CPU
    and sdpa on a GPU (whose flash kernels beat both); grouped_bmm is registered first."""
    if name == "auto":
        name = "sdpa" if on_cuda else ATTENTION_NAME
    if name == ATTENTION_NAME:
        register()
    return name


def register() -> str:
    """Make ATTENTION_NAME known to transformers (its attention and mask interfaces); idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(ATTENTION_NAME, grouped_bmm_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, eager_mask)
    return ATTENTION_NAME
