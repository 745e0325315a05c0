"""log p(completion | prompt) for many completions per prompt, processing each prompt once.

Layout of one packed row per sample (prompts left-padded so that every prompt ends at column
P-1, completions concatenated after it, right padding at the end):

    [pad .. pad | prompt (P_i tokens) | completion 1 | completion 2 | ... | pad .. pad]

A 4D attention mask lets each prompt token see earlier prompt tokens, and each completion
token see the whole prompt plus the earlier tokens of its own completion only; padding
queries see only themselves (so no softmax row is empty). position_ids run 0..P_i-1 over the
prompt and restart at P_i for every completion, so every completion token gets exactly the
position, context and therefore the log-prob it would get in its own prompt+completion
sequence. Because all prompts end at the same column, only the last (completion tokens + 1)
positions need logits (`logits_to_keep`), which also keeps the vocab projection small.

transformers 5.x passes a 4D `attention_mask` through `create_causal_mask` unchanged (it
returns early for any 4D tensor or flex `BlockMask`) to the attention function, so the mask
is built per backend:
- sdpa: a bool mask (True = allowed) for `scaled_dot_product_attention`;
- eager: an additive mask in the model dtype (0 where allowed, dtype-min elsewhere), because
  eager *adds* the mask to the scores (a bool mask would be silently wrong); grouped_bmm
  (eapo_exp/backbones/attention.py) gets the same, which it slices per query block;
- flex_attention: a `BlockMask` from `create_block_mask`, whose mask_mod applies the same
  segment/causal rule (torch's CPU flex kernel has no backward: flex trains on GPU only).
Any other backend (flash_attention_2, ...) cannot take a custom mask: we fall back to the
naive computation, which re-encodes the prompt for every completion (~K+1 times the tokens,
~10x when scoring 21 candidates), and warn once per process.

The model may be a DistributedDataParallel wrapper: the config and embeddings are read from
the wrapped module, while the forward goes through the wrapper (it syncs the gradients).
Log-probs are taken from the logits a block of rows at a time in float32
(eapo_exp.losses.logprobs), never from a float32 copy of all the logits.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from eapo_exp.losses.logprobs import token_logprobs

SUPPORTED_ATTENTION = ("eager", "sdpa", "flex_attention", "grouped_bmm")
_warned_naive = False


class CompletionLogprobs(NamedTuple):
    """logprobs: [B, Kmax] summed (or mean when length-normalized) log-probs, -inf where
    sample b has fewer than Kmax completions; counts: [B, Kmax] completion lengths (0 = none).
    """

    logprobs: torch.Tensor
    counts: torch.Tensor


class TokenLogprobs(NamedTuple):
    """token_logprobs: [B, Kmax, Lmax] per-token log-probs, 0 beyond each completion's end;
    counts: [B, Kmax] completion lengths."""

    token_logprobs: torch.Tensor
    counts: torch.Tensor


def _check_inputs(prompts: Sequence[Sequence[int]],
                  completions: Sequence[Sequence[Sequence[int]]]) -> None:
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completion lists")
    for b, (prompt, comps) in enumerate(zip(prompts, completions)):
        if len(prompt) == 0:
            raise ValueError(f"prompt {b} is empty; a completion needs at least one prompt token")
        for k, comp in enumerate(comps):
            if len(comp) == 0:
                raise ValueError(f"completion {k} of prompt {b} is empty")


def unwrap_model(model):
    """The module that holds config and weights, under DDP / DataParallel / torch.compile.

    Attribute reads go here; forward calls must still go through `model` itself (DDP
    registers its gradient all-reduce in the wrapper's forward).
    """
    parallel = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    while True:
        if isinstance(model, parallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def _model_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    weight = unwrap_model(model).get_input_embeddings().weight
    return weight.device, weight.dtype


def attention_implementation(model) -> str:
    config = unwrap_model(model).config
    return str(getattr(config, "_attn_implementation", None) or "eager")


def _warn_naive(impl: str) -> None:
    global _warned_naive
    if _warned_naive:
        return
    _warned_naive = True
    warnings.warn(
        f"attention implementation {impl!r} cannot take the shared-prompt mask: completion "
        "log-probs fall back to one prompt+completion sequence per completion, re-encoding "
        "the prompt each time (~K+1 times the tokens; ~10x when scoring 21 candidates). "
        "Load the model with attn_implementation='sdpa' or 'flex_attention' "
        "(backbone.loader.attn_implementation=sdpa).", stacklevel=3,
    )


def _counts(completions, kmax: int) -> torch.Tensor:
    counts = torch.zeros(len(completions), kmax, dtype=torch.long)
    for b, comps in enumerate(completions):
        for k, comp in enumerate(comps):
            counts[b, k] = len(comp)
    return counts


def _scatter_tokens(lp: torch.Tensor, b_idx, k_idx, j_idx, shape) -> torch.Tensor:
    out = lp.new_zeros(shape)
    return out.index_put((b_idx, k_idx, j_idx), lp)


def _finish(token_lp: torch.Tensor, counts: torch.Tensor,
            length_normalize: bool) -> CompletionLogprobs:
    counts = counts.to(token_lp.device)
    sums = token_lp.sum(-1)
    if length_normalize:
        sums = sums / counts.clamp(min=1).to(sums.dtype)
    sums = sums.masked_fill(counts == 0, float("-inf"))
    return CompletionLogprobs(sums, counts)


def _allowed_mask(seg: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] bool: which key each query may attend to (see the module docstring)."""
    total = seg.shape[1]
    seg_q, seg_k = seg[:, :, None], seg[:, None, :]
    causal = torch.ones(total, total, dtype=torch.bool, device=seg.device).tril()
    allowed = causal & (((seg_k == 0) & (seg_q >= 0)) | ((seg_k == seg_q) & (seg_q > 0)))
    allowed = allowed | torch.eye(total, dtype=torch.bool, device=seg.device)  # pad: self only
    return allowed[:, None, :, :]


def _flex_block_mask(seg: torch.Tensor):
    """The same rule as _allowed_mask, as a flex-attention BlockMask."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q, kv):
        seg_q, seg_k = seg[b, q], seg[b, kv]
        same = ((seg_k == 0) & (seg_q >= 0)) | ((seg_k == seg_q) & (seg_q > 0))
        return (q == kv) | ((q >= kv) & same)

    bsz, total = seg.shape
    # The uncompiled builder materialises a dense [B, T, T] bool mask, as the sdpa path does:
    # small at these row lengths, and no recompilation for every new row length.
    return create_block_mask(mask_mod, B=bsz, H=None, Q_LEN=total, KV_LEN=total,
                             device=seg.device, _compile=False)


def _attention_mask(impl: str, seg: torch.Tensor, dtype: torch.dtype):
    if impl == "flex_attention":
        return _flex_block_mask(seg)
    allowed = _allowed_mask(seg)
    if impl == "sdpa":
        return allowed
    mask = torch.zeros(allowed.shape, dtype=dtype, device=seg.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


# ---------------------------------------------------------------------------------- shared
def completion_token_logprobs(
    model,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[Sequence[int]]],
    pad_id: int,
) -> TokenLogprobs:
    """Per-token log p(completion_k | prompt) for every completion of every prompt.

    One packed forward for the whole batch; each prompt is encoded once and shared by all its
    completions. Differentiable. See the module docstring for the layout.
    """
    _check_inputs(prompts, completions)
    impl = attention_implementation(model)
    if impl not in SUPPORTED_ATTENTION:
        _warn_naive(impl)
        return naive_completion_token_logprobs(model, prompts, completions, pad_id)

    device, dtype = _model_device_dtype(model)
    bsz = len(prompts)
    kmax = max((len(c) for c in completions), default=0)
    lmax = max((len(x) for comps in completions for x in comps), default=0)
    counts = _counts(completions, kmax)
    if kmax == 0:
        return TokenLogprobs(torch.zeros(bsz, 0, 0, device=device), counts.to(device))

    plen = max(len(p) for p in prompts)
    ctot = max(1, max(sum(len(x) for x in comps) for comps in completions))
    total = plen + ctot

    input_ids = np.full((bsz, total), pad_id, dtype=np.int64)
    position_ids = np.zeros((bsz, total), dtype=np.int64)
    segment = np.full((bsz, total), -1, dtype=np.int64)  # -1 pad, 0 prompt, k+1 completion k
    tgt = np.zeros((bsz, ctot), dtype=np.int64)  # completion token ids, flat per row
    pred = np.zeros((bsz, ctot), dtype=np.int64)  # logits index predicting each token
    comp_k = np.full((bsz, ctot), -1, dtype=np.int64)
    comp_j = np.zeros((bsz, ctot), dtype=np.int64)
    for b, (prompt, comps) in enumerate(zip(prompts, completions)):
        n = len(prompt)
        input_ids[b, plen - n:plen] = prompt
        position_ids[b, plen - n:plen] = np.arange(n)
        segment[b, plen - n:plen] = 0
        off = 0
        for k, comp in enumerate(comps):
            length = len(comp)
            cols = slice(plen + off, plen + off + length)
            input_ids[b, cols] = comp
            position_ids[b, cols] = n + np.arange(length)
            segment[b, cols] = k + 1
            flat = slice(off, off + length)
            tgt[b, flat] = comp
            # logits index r corresponds to row column plen - 1 + r: the first token of every
            # completion is predicted by the last prompt token (r = 0), token j > 0 by the
            # completion token before it (column plen + off + j - 1, i.e. r = off + j).
            pred[b, flat] = np.arange(off, off + length)
            pred[b, off] = 0
            comp_k[b, flat] = k
            comp_j[b, flat] = np.arange(length)
            off += length

    ids_t = torch.from_numpy(input_ids).to(device)
    pos_t = torch.from_numpy(position_ids).to(device)
    mask = _attention_mask(impl, torch.from_numpy(segment).to(device), dtype)
    out = model(
        input_ids=ids_t, attention_mask=mask, position_ids=pos_t,
        use_cache=False, logits_to_keep=ctot + 1,
    )
    logits = out.logits
    if logits.shape[1] != ctot + 1:  # a model that ignores logits_to_keep
        logits = logits[:, -(ctot + 1):]

    pred_t = torch.from_numpy(pred).to(device)
    tgt_t = torch.from_numpy(tgt).to(device)
    lp = token_logprobs(logits, pred_t, tgt_t)
    valid = torch.from_numpy(comp_k >= 0).to(device)
    b_idx = torch.arange(bsz, device=device)[:, None].expand(bsz, ctot)
    token_lp = _scatter_tokens(
        lp[valid], b_idx[valid], torch.from_numpy(comp_k).to(device)[valid],
        torch.from_numpy(comp_j).to(device)[valid], (bsz, kmax, lmax),
    )
    return TokenLogprobs(token_lp, counts.to(device))


def completion_logprobs(
    model,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[Sequence[int]]],
    pad_id: int,
    length_normalize: bool = False,
) -> CompletionLogprobs:
    """Summed log p(completion_k | prompt_b) -> ([B, Kmax] with -inf padding, [B, Kmax] counts).

    With length_normalize the sums are divided by the completion lengths (mean log-prob).
    """
    token_lp, counts = completion_token_logprobs(model, prompts, completions, pad_id)
    return _finish(token_lp, counts, length_normalize)


# ----------------------------------------------------------------------------------- naive
def naive_completion_token_logprobs(
    model,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[Sequence[int]]],
    pad_id: int,
    batch_size: int = 16,
) -> TokenLogprobs:
    """Reference: every completion as its own prompt+completion sequence.

    Sequences are left-padded in chunks of batch_size with a 2D attention mask and explicit
    position_ids; only the last (longest completion + 1) positions get logits.
    """
    _check_inputs(prompts, completions)
    device, _ = _model_device_dtype(model)
    bsz = len(prompts)
    kmax = max((len(c) for c in completions), default=0)
    lmax = max((len(x) for comps in completions for x in comps), default=0)
    counts = _counts(completions, kmax)
    pairs = [(b, k) for b, comps in enumerate(completions) for k in range(len(comps))]
    pieces, index = [], []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        seqs = [list(prompts[b]) + list(completions[b][k]) for b, k in chunk]
        lens = [len(completions[b][k]) for b, k in chunk]
        width, cmax = max(len(s) for s in seqs), max(lens)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, width - len(seq):] = torch.tensor(seq)
            attn[row, width - len(seq):] = 1
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        out = model(
            input_ids=ids.to(device), attention_mask=attn.to(device),
            position_ids=pos.to(device), use_cache=False, logits_to_keep=cmax + 1,
        )
        logits = out.logits
        if logits.shape[1] != cmax + 1:
            logits = logits[:, -(cmax + 1):]
        # logits index r <-> column width - cmax - 1 + r; token j of a length-L completion sits
        # at column width - L + j and is predicted by index cmax - L + j.
        pred = torch.zeros(len(seqs), cmax, dtype=torch.long)
        tgt = torch.zeros(len(seqs), cmax, dtype=torch.long)
        for row, ((b, k), length) in enumerate(zip(chunk, lens)):
            pred[row, :length] = torch.arange(cmax - length, cmax)
            tgt[row, :length] = torch.tensor(list(completions[b][k]))
        lp = token_logprobs(logits, pred.to(device), tgt.to(device))
        for row, ((b, k), length) in enumerate(zip(chunk, lens)):
            pieces.append(lp[row, :length])
            index.append((b, k, length))
    if not pieces:
        return TokenLogprobs(torch.zeros(bsz, kmax, lmax, device=device), counts.to(device))
    values = torch.cat(pieces)
    b_idx = torch.tensor([b for b, _, n in index for _ in range(n)], device=device)
    k_idx = torch.tensor([k for _, k, n in index for _ in range(n)], device=device)
    j_idx = torch.tensor([j for _, _, n in index for j in range(n)], device=device)
    token_lp = _scatter_tokens(values, b_idx, k_idx, j_idx, (bsz, kmax, lmax))
    return TokenLogprobs(token_lp, counts.to(device))


def naive_completion_logprobs(
    model,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[Sequence[int]]],
    pad_id: int,
    length_normalize: bool = False,
    batch_size: int = 16,
) -> CompletionLogprobs:
    """Same result as completion_logprobs, one full sequence per completion (slow reference)."""
    token_lp, counts = naive_completion_token_logprobs(
        model, prompts, completions, pad_id, batch_size=batch_size)
    return _finish(token_lp, counts, length_normalize)
