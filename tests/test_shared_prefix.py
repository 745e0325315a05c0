"""Shared-prefix completion log-probs equal the naive one-sequence-per-completion ones."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from eapo_exp.training.shared_prefix import (
    completion_logprobs,
    completion_token_logprobs,
    naive_completion_logprobs,
)

VOCAB = 61


def tiny_llama(impl: str, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=0, eos_token_id=1, bos_token_id=None,
    )
    config._attn_implementation = impl
    model = LlamaForCausalLM(config).float()
    assert model.config._attn_implementation == impl
    return model


def batch(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)

    def rand(n):
        return torch.randint(2, VOCAB, (n,), generator=gen).tolist()

    prompts = [rand(7), rand(3), rand(12), rand(1)]
    completions = [
        [rand(2), rand(5), rand(1)],
        [rand(4)],
        [rand(3), rand(3), rand(6), rand(2), rand(1)],
        [rand(2), rand(2)],
    ]
    completions[2][1] = list(completions[2][0])  # duplicate completion
    return prompts, completions


def unbatched_reference(model, prompts, completions):
    out = {}
    for b, (prompt, comps) in enumerate(zip(prompts, completions)):
        for k, comp in enumerate(comps):
            ids = torch.tensor([list(prompt) + list(comp)])
            logp = model(ids).logits.log_softmax(-1)[0]
            out[b, k] = sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(comp))
    return out


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_values_match_naive_and_unbatched(impl):
    model = tiny_llama(impl)
    prompts, completions = batch()
    with torch.no_grad():
        shared = completion_logprobs(model, prompts, completions, pad_id=0)
        naive = naive_completion_logprobs(model, prompts, completions, pad_id=0, batch_size=3)
        ref = unbatched_reference(model, prompts, completions)
    assert shared.logprobs.shape == (4, 5)
    assert torch.equal(shared.counts, naive.counts)
    assert shared.counts[1].tolist() == [4, 0, 0, 0, 0]
    finite = shared.counts > 0
    assert torch.isinf(shared.logprobs[~finite]).all()
    assert torch.allclose(shared.logprobs[finite], naive.logprobs[finite], atol=1e-5, rtol=0)
    for (b, k), value in ref.items():
        assert abs(float(shared.logprobs[b, k]) - value) < 1e-5
    # Duplicate completions get identical scores.
    assert abs(float(shared.logprobs[2, 0] - shared.logprobs[2, 1])) < 1e-5

    normalized = completion_logprobs(model, prompts, completions, 0, length_normalize=True)
    expected = shared.logprobs[finite] / shared.counts[finite]
    assert torch.allclose(normalized.logprobs[finite], expected, atol=1e-6)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_gradients_match_naive(impl):
    model = tiny_llama(impl, seed=3)
    prompts, completions = batch(seed=4)
    weights = torch.randn(4, 5, generator=torch.Generator().manual_seed(5))

    def grads(fn):
        model.zero_grad()
        result = fn(model, prompts, completions, 0)
        mask = result.counts > 0
        loss = (result.logprobs[mask] * weights[mask]).sum()
        loss.backward()
        return {n: p.grad.detach().clone() for n, p in model.named_parameters()}

    shared = grads(completion_logprobs)
    naive = grads(naive_completion_logprobs)
    for name, grad in shared.items():
        assert torch.allclose(grad, naive[name], atol=1e-5, rtol=0), name
    assert any(g.abs().sum() > 0 for g in shared.values())


def test_token_logprobs_layout():
    model = tiny_llama("sdpa")
    prompts, completions = batch()
    with torch.no_grad():
        tok = completion_token_logprobs(model, prompts, completions, pad_id=0)
        sums = completion_logprobs(model, prompts, completions, pad_id=0)
    assert tok.token_logprobs.shape == (4, 5, 6)
    assert torch.all(tok.token_logprobs[0, 0, 2:] == 0)
    mask = sums.counts > 0
    assert torch.allclose(tok.token_logprobs.sum(-1)[mask], sums.logprobs[mask])


def test_peft_lora_model():
    peft = pytest.importorskip("peft")
    model = tiny_llama("sdpa", seed=7)
    lora = peft.get_peft_model(model, peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
        init_lora_weights=False))
    prompts, completions = batch(seed=8)
    shared = completion_logprobs(lora, prompts, completions, 0)
    naive = naive_completion_logprobs(lora, prompts, completions, 0)
    mask = shared.counts > 0
    assert torch.allclose(shared.logprobs[mask], naive.logprobs[mask], atol=1e-5, rtol=0)
    shared.logprobs[mask].sum().backward()
    lora_grads = [p.grad for n, p in lora.named_parameters() if "lora_" in n]
    assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads)


def test_bad_inputs():
    model = tiny_llama("eager")
    with pytest.raises(ValueError, match="empty"):
        completion_logprobs(model, [[]], [[[3]]], 0)
    with pytest.raises(ValueError, match="empty"):
        completion_logprobs(model, [[3]], [[[]]], 0)
