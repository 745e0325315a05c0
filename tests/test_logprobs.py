"""Blockwise token log-probs and SFT NLL equal the plain float32 log_softmax, values and grads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eapo_exp.losses import response_nll
from eapo_exp.losses.logprobs import _blocks, _rows_per_block, token_logprobs


def reference(logits, pred, tgt):
    logp = logits.float().log_softmax(-1)
    b_idx = torch.arange(logits.shape[0])[:, None]
    return logp[b_idx, pred, tgt]


def inputs(dtype, batch=3, rows=7, vocab=29, cols=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # A strided view, as logits[:, -keep:] of a longer sequence is.
    full = (torch.randn(batch, rows + 4, vocab, generator=gen) * 3).to(dtype)
    logits = full[:, 4:].detach().requires_grad_(False)
    pred = torch.randint(0, rows, (batch, cols), generator=gen)
    pred[:, :3] = 0  # several targets per row, as the last prompt token has
    tgt = torch.randint(0, vocab, (batch, cols), generator=gen)
    weights = torch.randn(batch, cols, generator=gen)
    return logits, pred, tgt, weights


def value_and_grad(fn, logits, pred, tgt, weights):
    leaf = logits.detach().clone().requires_grad_(True)
    out = fn(leaf, pred, tgt)
    (out * weights).sum().backward()
    return out.detach(), leaf.grad


@pytest.mark.parametrize("block_rows", [None, 1, 3, 7, 10, 100])
def test_token_logprobs_match_reference_float32(block_rows):
    logits, pred, tgt, weights = inputs(torch.float32)
    got, got_grad = value_and_grad(
        lambda x, p, t: token_logprobs(x, p, t, block_rows=block_rows), logits, pred, tgt,
        weights)
    want, want_grad = value_and_grad(reference, logits, pred, tgt, weights)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_grad, want_grad, atol=1e-6, rtol=1e-5)


def test_token_logprobs_bfloat16_grads_in_model_dtype():
    logits, pred, tgt, weights = inputs(torch.bfloat16)
    got, got_grad = value_and_grad(
        lambda x, p, t: token_logprobs(x, p, t, block_rows=4), logits, pred, tgt, weights)
    want, want_grad = value_and_grad(reference, logits, pred, tgt, weights)
    assert got.dtype == torch.float32 and got_grad.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)  # same float32 math
    torch.testing.assert_close(got_grad.float(), want_grad.float(), atol=1e-2, rtol=1e-2)


def test_blocks_cover_the_grid_once():
    for batch, rows, per in [(3, 7, 1), (3, 7, 3), (3, 7, 7), (3, 7, 15), (1, 1, 4), (4, 5, 2)]:
        seen = torch.zeros(batch, rows, dtype=torch.long)
        for b0, b1, r0, r1 in _blocks(batch, rows, per):
            assert (b1 - b0) * (r1 - r0) <= max(per, 1)
            seen[b0:b1, r0:r1] += 1
        assert bool((seen == 1).all()), (batch, rows, per)


def test_cpu_blocks_are_cache_sized_and_change_no_value():
    # A GPU takes few large blocks; a CPU a few MiB at a time (~21 rows of SmolLM2's vocabulary).
    assert _rows_per_block(49152, None, torch.device("cuda")) == (1 << 27) // 49152
    assert _rows_per_block(49152, None, torch.device("cpu")) == 21
    assert _rows_per_block(49152, 5, torch.device("cpu")) == 5
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 50, 49152, generator=gen) * 3  # 5 blocks of rows per sample
    pred = torch.randint(0, 50, (2, 40), generator=gen)
    tgt = torch.randint(0, 49152, (2, 40), generator=gen)
    weights = torch.randn(2, 40, generator=gen)
    got, got_grad = value_and_grad(token_logprobs, logits, pred, tgt, weights)
    one, one_grad = value_and_grad(lambda x, p, t: token_logprobs(x, p, t, block_rows=100),
                                   logits, pred, tgt, weights)
    assert torch.equal(got, one) and torch.equal(got_grad, one_grad)
    want, _ = value_and_grad(reference, logits, pred, tgt, weights)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_token_logprobs_empty_and_bad_shapes():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    empty = torch.zeros(2, 0, dtype=torch.long)
    assert token_logprobs(logits, empty, empty).shape == (2, 0)
    with pytest.raises(ValueError, match="do not fit"):
        token_logprobs(logits, torch.zeros(2, 4, dtype=torch.long),
                       torch.zeros(2, 3, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_response_nll_matches_cross_entropy(dtype):
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(3, 8, 31, generator=gen) * 2).to(dtype)
    labels = torch.randint(0, 31, (3, 8), generator=gen)
    labels[:, :3] = -100
    labels[1, 5:] = -100

    def plain(x):
        return F.cross_entropy(x[:, :-1].float().reshape(-1, 31), labels[:, 1:].reshape(-1),
                               ignore_index=-100)

    leaf_a = logits.clone().requires_grad_(True)
    leaf_b = logits.clone().requires_grad_(True)
    nll, want_nll = response_nll(leaf_a, labels), plain(leaf_b)
    torch.testing.assert_close(nll, want_nll, atol=1e-5, rtol=1e-5)
    nll.backward()
    want_nll.backward()
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(leaf_a.grad.float(), leaf_b.grad.float(), atol=tol, rtol=tol)


def test_response_nll_without_response_tokens_is_zero_with_graph():
    logits = torch.randn(2, 4, 5, requires_grad=True)
    loss = response_nll(logits, torch.full((2, 4), -100))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) == 0.0
