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
Autograd differentiates it with matmuls and one softmax backward per block.

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
    bsz, heads, q_len, dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    scale = dim ** -0.5 if scaling is None else scaling
    bias = _bias(attention_mask, q_len, k_len, query.dtype, query.device)
    stacked = (query * scale).view(bsz, kv_heads, groups, q_len, dim)
    drop = dropout if module is not None and module.training else 0.0
    # A causal layer never lets a query see a later key: a block of queries needs only the
    # keys up to its last position, which skips ~1/3 of the work at these lengths.
    causal = module is None or getattr(module, "is_causal", False)
    block = QUERY_BLOCK if causal else q_len
    pieces = []
    for start in range(0, q_len, block):
        end = min(start + block, q_len)
        keys = k_len - q_len + end if causal else k_len
        pieces.append(_attend(stacked[:, :, :, start:end], key[:, :, :keys],
                              value[:, :, :keys], bias[..., start:end, :keys], drop))
    out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=3)
    return out.view(bsz, heads, q_len, dim).transpose(1, 2).contiguous(), None


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor,
            dropout: float) -> torch.Tensor:
    """query [B, KV, G, T, D] (already scaled), key/value [B, KV, S, D], bias [B|1, 1, T, S]
    -> [B, KV, G, T, D]. The G query heads of a key head are one [G*T, D] @ [D, S] matmul."""
    bsz, kv_heads, groups, rows, dim = query.shape
    scores = torch.matmul(query.reshape(bsz, kv_heads, groups * rows, dim),
                          key.transpose(-1, -2))
    scores.view(bsz, kv_heads, groups, rows, -1).add_(bias[:, :, None])
    weights = torch.softmax(scores, dim=-1)
    if dropout:
        weights = torch.nn.functional.dropout(weights, p=dropout)
    return torch.matmul(weights, value).view(bsz, kv_heads, groups, rows, dim)


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
