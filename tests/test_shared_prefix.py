"""Shared-prefix completion log-probs equal the naive one-sequence-per-completion ones."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from eapo_exp.backbones.attention import register as register_grouped_bmm
from eapo_exp.training.shared_prefix import (
    completion_logprobs,
    completion_token_logprobs,
    naive_completion_logprobs,
)

VOCAB = 61


def tiny_llama(impl: str, seed: int = 0, hidden_size: int = 32) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=hidden_size, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=0, eos_token_id=1, bos_token_id=None,
    )
    if impl == "grouped_bmm":
        register_grouped_bmm()
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


@pytest.mark.parametrize("impl", ["eager", "sdpa", "grouped_bmm"])
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


@pytest.mark.parametrize("impl", ["eager", "sdpa", "grouped_bmm"])
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


FLEX_HIDDEN = 64  # head_dim 16: the CUDA flex kernels need at least 16


def flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import create_block_mask  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not flex_available(), reason="this torch has no flex attention")
def test_flex_attention_matches_sdpa():
    # torch's CPU flex kernel has no backward, so on CPU this compares values only (the
    # first call compiles the kernel: ~20 s on 2 cores from a cold inductor cache).
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("flex attention on CPU compiles a C++ kernel: no C++ compiler here")
    sdpa = tiny_llama("sdpa", hidden_size=FLEX_HIDDEN).to(device)
    flex = tiny_llama("flex_attention", hidden_size=FLEX_HIDDEN).to(device)
    prompts, completions = batch()
    with torch.no_grad():
        want = completion_logprobs(sdpa, prompts, completions, pad_id=0)
        got = completion_logprobs(flex, prompts, completions, pad_id=0)
    assert torch.equal(got.counts, want.counts)
    mask = want.counts > 0
    atol = 1e-5 if device == "cpu" else 2e-3  # CUDA flex kernels may use TF32
    assert torch.allclose(got.logprobs[mask], want.logprobs[mask], atol=atol, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not flex_available(), reason="this torch has no flex attention")
def test_flex_attention_gradients_match_naive_on_cuda():
    model = tiny_llama("flex_attention", seed=3, hidden_size=FLEX_HIDDEN).cuda()
    reference = tiny_llama("sdpa", seed=3, hidden_size=FLEX_HIDDEN).cuda()
    prompts, completions = batch(seed=4)
    shared = completion_logprobs(model, prompts, completions, 0)
    naive = naive_completion_logprobs(reference, prompts, completions, 0)
    mask = shared.counts > 0
    assert torch.allclose(shared.logprobs[mask], naive.logprobs[mask], atol=2e-3, rtol=0)
    shared.logprobs[mask].sum().backward()
    naive.logprobs[mask].sum().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=2e-3, rtol=1e-2), name


def test_distributed_data_parallel_wrapper(tmp_path):
    # Attribute reads must reach the wrapped model; the forward must go through DDP.
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from eapo_exp.training.shared_prefix import unwrap_model

    model = tiny_llama("sdpa", seed=9)
    prompts, completions = batch(seed=10)
    plain = completion_logprobs(model, prompts, completions, 0)
    mask = plain.counts > 0
    plain.logprobs[mask].sum().backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        wrapped = DistributedDataParallel(model)
        assert unwrap_model(wrapped) is model
        calls = []
        wrapped.register_forward_pre_hook(lambda module, args: calls.append(1))
        out = completion_logprobs(wrapped, prompts, completions, 0)
        out.logprobs[mask].sum().backward()
    finally:
        dist.destroy_process_group()
    assert calls, "the forward bypassed the DDP wrapper"
    assert torch.allclose(out.logprobs[mask], plain.logprobs[mask], atol=1e-6, rtol=0)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, want[name], atol=1e-6, rtol=0), name


def test_unsupported_attention_warns_once_and_falls_back(monkeypatch):
    from types import SimpleNamespace

    from eapo_exp.training import shared_prefix

    monkeypatch.setattr(shared_prefix, "_warned_naive", False)
    calls = []
    monkeypatch.setattr(shared_prefix, "naive_completion_token_logprobs",
                        lambda *args: calls.append(args) or "naive")
    model = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    with pytest.warns(UserWarning, match=r"~10x when scoring 21 candidates.*sdpa"):
        assert completion_token_logprobs(model, [[3]], [[[4]]], 0) == "naive"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert completion_token_logprobs(model, [[3]], [[[4]]], 0) == "naive"
    assert len(calls) == 2
