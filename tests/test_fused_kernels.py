"""The fast paths give the numbers of the reference paths within stated tolerances:
grouped_bmm attention vs sdpa, LoRA in the model dtype vs PEFT's float32 branch, a LoRA
adapter merged for scoring vs the adapter branch, and torch.compile'd decoder layers vs
eager."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from eapo_exp.backbones import attention
from eapo_exp.backbones import compile as compile_module
from eapo_exp.backbones.attention import register, resolve_attention
from eapo_exp.backbones.compile import (
    compile_decoder_layers,
    compile_wanted,
    cpp_compiler,
    decoder_layers,
)
from eapo_exp.backbones.lora import apply_lora, load_adapter, merge_for_inference, save_adapter
from eapo_exp.backbones.lora_compute import set_lora_compute_dtype
from eapo_exp.errors import ConfigError, ModelError
from eapo_exp.training.shared_prefix import completion_logprobs, naive_completion_logprobs

VOCAB = 97


def llama(impl: str, dtype=torch.float32, seed: int = 0, layers: int = 2) -> LlamaForCausalLM:
    register()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=96,
                         num_hidden_layers=layers, num_attention_heads=6, num_key_value_heads=2,
                         max_position_embeddings=256, pad_token_id=0, eos_token_id=1,
                         bos_token_id=None)
    config._attn_implementation = impl
    return LlamaForCausalLM(config).to(dtype).eval()


def batch(seed: int = 3):
    gen = torch.Generator().manual_seed(seed)

    def rand(n):
        return torch.randint(2, VOCAB, (n,), generator=gen).tolist()

    prompts = [rand(19), rand(6), rand(31)]
    completions = [[rand(3), rand(5)], [rand(4), rand(2), rand(6)], [rand(1)]]
    return prompts, completions


def lora_grads(model) -> dict[str, torch.Tensor]:
    return {name: param.grad.detach().float().clone() for name, param in model.named_parameters()
            if param.grad is not None}


def randomize_lora_b(model) -> None:
    """B starts at zero (so would A's gradient): give the adapter branch a real value."""
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.05)


def training_pass(model) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Completion log-probs of batch() and the gradients of their sum."""
    model.train()
    logps = completion_logprobs(model, *batch(), 0).logprobs
    logps[torch.isfinite(logps)].sum().backward()
    return logps.detach(), lora_grads(model)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


def max_relative(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    """The largest relative difference over the gradients; NaN if any is NaN (Python's max
    would drop it)."""
    assert set(got) == set(want) and want
    return float(torch.tensor([relative(got[n], want[n]) for n in want]).max())


def with_same_weights(impl: str, reference: LlamaForCausalLM) -> LlamaForCausalLM:
    model = llama(impl, dtype=reference.dtype)
    model.load_state_dict(reference.state_dict())
    return model


def test_auto_attention_is_grouped_bmm_on_cpu_and_sdpa_on_cuda():
    assert resolve_attention("auto", on_cuda=False) == "grouped_bmm"
    assert resolve_attention("auto", on_cuda=True) == "sdpa"
    assert resolve_attention("eager", on_cuda=False) == "eager"


@pytest.fixture(params=[128, 5], ids=["one-query-block", "query-blocks-of-5"])
def query_block(request, monkeypatch):
    """grouped_bmm's causal split, as configured and with blocks small enough to split
    these short rows into several."""
    monkeypatch.setattr(attention, "QUERY_BLOCK", request.param)
    return request.param


def test_grouped_bmm_values_and_gradients_match_naive_in_query_blocks(query_block):
    model = llama("grouped_bmm")
    prompts, completions = batch()
    shared = completion_logprobs(model, prompts, completions, 0).logprobs
    naive = naive_completion_logprobs(model, prompts, completions, 0).logprobs
    finite = torch.isfinite(naive)
    assert torch.allclose(shared[finite], naive[finite], atol=1e-5, rtol=1e-5)
    shared[finite].sum().backward()
    got = lora_grads(model)
    model.zero_grad()
    naive_completion_logprobs(model, prompts, completions, 0).logprobs[finite].sum().backward()
    want = lora_grads(model)
    assert max_relative(got, want) < 1e-5


class _CausalLayer(torch.nn.Module):
    is_causal = True


def attention_inputs(dtype=torch.float64, q_len: int = 7, k_len: int = 10):
    """GQA shapes (6 query heads on 2 key heads) with 3 cached keys before the queries and a
    mask that also hides a few keys from every query; leaves that require grad."""
    gen = torch.Generator().manual_seed(0)

    def leaf(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_()

    query, key, value = leaf(2, 6, q_len, 4), leaf(2, 2, k_len, 4), leaf(2, 2, k_len, 4)
    allowed = torch.ones(2, 1, q_len, k_len, dtype=torch.bool).tril(k_len - q_len)
    allowed[0, :, :, 1] = False  # row 0: key 1 is padding
    allowed[1, :, 2:, 0] = False
    return query, key, value, allowed


def naive_attention(query, key, value, allowed):
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scores = query @ key.transpose(-1, -2) * query.shape[-1] ** -0.5
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return (probs @ value).transpose(1, 2)


@pytest.mark.parametrize("block", [3, 128])
def test_blocked_attention_backward_is_the_formulas_gradient(block, monkeypatch):
    """The hand-written backward against autograd's numerical check (float64), over query
    blocks, grouped heads, a KV cache and a padding mask, and the values against the formula."""
    monkeypatch.setattr(attention, "QUERY_BLOCK", block)
    query, key, value, allowed = attention_inputs()

    def attend(q, k, v):
        return attention.grouped_bmm_attention(_CausalLayer(), q, k, v, allowed)[0]

    assert torch.allclose(attend(query, key, value), naive_attention(query, key, value, allowed))
    assert torch.autograd.gradcheck(attend, (query, key, value))


def test_scoring_attention_skips_only_keys_no_query_of_its_block_sees(monkeypatch):
    """Without autograd, a causal layer with a mask runs each query block over the keys some
    query of the block may see: the formula's values on a shared-prompt layout (where keys
    are skipped), dense blocks where a query may see no key, and a new plan for a changed
    mask."""
    from eapo_exp.training.shared_prefix import _allowed_mask

    monkeypatch.setattr(attention, "LIVE_KEY_BLOCK", 4)
    # -1 padding, 0 prompt, k > 0 completion k (two rows, prompts ending at the same column)
    seg = torch.tensor([[-1, 0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 4, -1, -1],
                        [0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 4, 4, 4, 4, 4]])
    allowed = _allowed_mask(seg)
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(2, 6, 18, 4, generator=gen, dtype=torch.float64)
    key, value = (torch.randn(2, 2, 18, 4, generator=gen, dtype=torch.float64)
                  for _ in range(2))
    lowest = torch.finfo(torch.float64).min
    bias = torch.zeros(allowed.shape, dtype=torch.float64).masked_fill(~allowed, lowest)
    layer = _CausalLayer()
    with torch.no_grad():
        out = attention.grouped_bmm_attention(layer, query, key, value, bias)[0]
        assert torch.allclose(out, naive_attention(query, key, value, allowed))
        plan = attention._plan_cache[0][2]
        # Queries 12-15 see the prompt and completions 3 and 4 only: keys 5-9 are skipped.
        start, end, keys, _ = plan[3]
        assert (start, end) == (12, 16) and keys is not None
        assert set(keys.tolist()).isdisjoint(range(5, 10))
        bias[0, 0, 9] = lowest  # query 9 of row 0 may now see no key at all
        changed = attention.grouped_bmm_attention(layer, query, key, value, bias)[0]
        new_plan = attention._plan_cache[0][2]
        assert new_plan is not plan and new_plan[2][2] is None  # its block keeps every key
        dense = attention.BlockedAttention.apply(query, key, value, bias, 0.5, 4, True)
    assert torch.allclose(changed, dense)


def test_attention_dropout_path_is_the_same_attention(monkeypatch):
    """With dropout (training only) the blocks run through autograd; at a negligible rate
    they give the blocked attention's values and gradients, at 0.5 they drop weights."""
    monkeypatch.setattr(attention, "QUERY_BLOCK", 3)
    layer = _CausalLayer().train()
    results = []
    for dropout in (0.0, 1e-12):
        query, key, value, allowed = attention_inputs()
        out = attention.grouped_bmm_attention(layer, query, key, value, allowed,
                                              dropout=dropout)[0]
        out.pow(2).sum().backward()
        results.append((out, query.grad, key.grad, value.grad))
    for blocked, with_dropout in zip(*results):
        assert torch.allclose(blocked, with_dropout)
    query, key, value, allowed = attention_inputs()
    dropped = attention.grouped_bmm_attention(layer, query, key, value, allowed, dropout=0.5)[0]
    assert not torch.allclose(dropped, results[0][0])
    assert not torch.allclose(attention.grouped_bmm_attention(layer.eval(), query, key, value,
                                                              allowed, dropout=0.5)[0], dropped)


def test_grouped_bmm_matches_sdpa_with_padding_mask_and_kv_cache(query_block):
    sdpa = llama("sdpa")
    grouped = with_same_weights("grouped_bmm", sdpa)
    ids = torch.randint(2, VOCAB, (3, 17), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding, as the SFT batches have
    mask[2, :1] = 0
    with torch.no_grad():
        expected = sdpa(input_ids=ids, attention_mask=mask).logits
        got = grouped(input_ids=ids, attention_mask=mask).logits
        real = mask.bool()
        assert torch.allclose(got[real], expected[real], atol=1e-5, rtol=1e-5)
        # Decoding with a KV cache: one new token against 17 cached ones.
        past = grouped(input_ids=ids, attention_mask=mask, use_cache=True).past_key_values
        step_ids = torch.randint(2, VOCAB, (3, 1))
        step_mask = torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], dim=1)
        got_step = grouped(input_ids=step_ids, attention_mask=step_mask, past_key_values=past,
                           use_cache=True).logits
        full = sdpa(input_ids=torch.cat([ids, step_ids], 1), attention_mask=step_mask).logits
    assert torch.allclose(got_step[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)


def test_grouped_bmm_bf16_training_step_stays_within_bf16_rounding_of_sdpa():
    sdpa = apply_lora(llama("sdpa", torch.bfloat16), r=4, alpha=8, dropout=0.0,
                      compute_dtype="float32")
    base = llama("grouped_bmm", torch.bfloat16)
    base.load_state_dict(sdpa.base_model.model.state_dict(), strict=False)
    grouped = apply_lora(base, r=4, alpha=8, dropout=0.0, compute_dtype="float32")
    randomize_lora_b(sdpa)
    grouped.load_state_dict(sdpa.state_dict())
    (lp_sdpa, g_sdpa), (lp_grouped, g_grouped) = training_pass(sdpa), training_pass(grouped)
    finite = torch.isfinite(lp_sdpa)
    assert torch.equal(finite, torch.isfinite(lp_grouped))
    # bf16 carries ~3 significant digits; sums of ~5 token log-probs of ~4.6 each.
    assert (lp_grouped[finite] - lp_sdpa[finite]).abs().max() < 0.1
    assert set(g_sdpa) == set(g_grouped)
    assert max_relative(g_grouped, g_sdpa) < 0.05


@pytest.mark.parametrize("dtype, value_tol, grad_tol", [(torch.float32, 1e-5, 1e-5),
                                                          (torch.bfloat16, 0.1, 0.05)])
def test_lora_in_model_dtype_matches_peft_float32_branch(dtype, value_tol, grad_tol):
    reference = apply_lora(llama("sdpa", dtype), r=4, alpha=8, dropout=0.0,
                           compute_dtype="float32")
    randomize_lora_b(reference)
    fast = apply_lora(llama("sdpa", dtype), r=4, alpha=8, dropout=0.0, compute_dtype="model")
    fast.load_state_dict(reference.state_dict())
    (lp_ref, g_ref), (lp_fast, g_fast) = training_pass(reference), training_pass(fast)
    finite = torch.isfinite(lp_ref)
    assert (lp_fast[finite] - lp_ref[finite]).abs().max() < value_tol
    assert set(g_ref) == set(g_fast) and len(g_ref) == 2 * 4 * 2  # A, B x q/k/v/o x 2 layers
    assert max_relative(g_fast, g_ref) < grad_tol
    # The optimizer keeps updating float32 master weights.
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32
               for p in fast.parameters() if p.requires_grad)


def test_lora_compute_dtype_round_trips_and_rejects_bad_values(tmp_path):
    model = apply_lora(llama("sdpa"), r=4, alpha=8, dropout=0.0, compute_dtype="model")
    assert set_lora_compute_dtype(model, "model") == 8
    save_adapter(model, tmp_path / "adapter")
    reloaded = load_adapter(llama("sdpa"), tmp_path / "adapter", compute_dtype="float32")
    assert set_lora_compute_dtype(reloaded, "float32") == 0
    ids = torch.randint(2, VOCAB, (2, 9))
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reloaded(ids).logits, atol=1e-6)
    with pytest.raises(ConfigError, match="compute_dtype='half'"):
        set_lora_compute_dtype(model, "half")


# Measured: 4e-6 (float32) and 3e-3 (bf16) apart, against an adapter that moves scores by 0.45.
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 0.03)])
def test_merged_adapter_scores_like_the_adapter_branch(tmp_path, dtype, tol):
    trained = apply_lora(llama("grouped_bmm", dtype), r=4, alpha=8, dropout=0.0,
                         target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"])
    torch.manual_seed(1)
    for name, param in trained.named_parameters():
        if "lora_B" in name:  # large enough to move every score well past bf16 rounding
            param.data.normal_(0, 0.5)
    save_adapter(trained, tmp_path / "adapter")
    adapted = load_adapter(llama("grouped_bmm", dtype), tmp_path / "adapter")
    with torch.no_grad():
        unmerged = completion_logprobs(adapted, *batch(), 0).logprobs
        merged_model = merge_for_inference(load_adapter(llama("grouped_bmm", dtype),
                                                        tmp_path / "adapter"))
        merged = completion_logprobs(merged_model, *batch(), 0).logprobs
        base = completion_logprobs(llama("grouped_bmm", dtype), *batch(), 0).logprobs
    assert not any("lora" in name for name, _ in merged_model.named_modules())
    finite = torch.isfinite(unmerged)
    assert torch.equal(finite, torch.isfinite(merged))
    assert (merged[finite] - unmerged[finite]).abs().max() < tol
    # The adapter matters here: the merge is not trivially the base model.
    assert (base[finite] - unmerged[finite]).abs().max() > 10 * tol


def test_lora_with_dropout_in_training_takes_peft_path():
    model = apply_lora(llama("sdpa"), r=4, alpha=8, dropout=0.5, compute_dtype="model")
    model.train()
    ids = torch.randint(2, VOCAB, (2, 9))
    torch.manual_seed(0)
    first = model(ids).logits
    torch.manual_seed(1)
    second = model(ids).logits
    # B is zero at init, so dropout cannot change the output; the call must still work
    # (PEFT's forward draws the mask) and agree with the eval-mode value.
    model.eval()
    assert torch.allclose(first, second) and torch.allclose(first, model(ids).logits)


def test_compile_without_a_cpp_compiler_runs_eager(tmp_path, monkeypatch, caplog):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("CXX", raising=False)
    assert cpp_compiler() is None
    model = llama("grouped_bmm")
    with caplog.at_level("WARNING"):
        assert compile_decoder_layers(model, tmp_path / "inductor") == 0
    assert "none was found" in caplog.text
    assert all(layer._compiled_call_impl is None for layer in decoder_layers(model))
    monkeypatch.setenv("CXX", sys.executable)  # any executable named by CXX is taken
    assert cpp_compiler() == sys.executable


@pytest.mark.parametrize("amx", [True, False])
def test_compile_auto_compiles_on_a_cpu_with_amx_only(monkeypatch, amx):
    monkeypatch.setattr(compile_module, "cpu_has_amx", lambda: amx)
    assert compile_wanted("auto", "cpu") is amx
    assert compile_wanted(" AUTO ", torch.device("cpu")) is amx
    assert compile_wanted("auto", "cuda") is False  # opt-in on a GPU
    assert compile_wanted(True, "cuda") is True and compile_wanted(False, "cpu") is False
    with pytest.raises(ConfigError, match="got 'yes'"):
        compile_wanted("yes", "cpu")


@pytest.mark.parametrize("amx", [True, False])
def test_compile_auto_resolves_to_the_fingerprint_of_what_ran(monkeypatch, amx):
    from eapo_exp.stages.llm import backbone_spec
    from tests.conftest import compose_config

    monkeypatch.setattr(compile_module, "cpu_has_amx", lambda: amx)
    cfg = compose_config(["backbone.compile.enabled=auto"])
    assert compile_module.resolve_auto_compile(cfg, "cpu") is True
    assert cfg.backbone.compile.enabled is amx
    explicit = compose_config([f"backbone.compile.enabled={str(amx).lower()}"])
    assert backbone_spec(cfg.backbone) == backbone_spec(explicit.backbone)
    assert compile_module.resolve_auto_compile(cfg, "cpu") is False  # already resolved


def test_decoder_layers_are_found_and_a_model_without_them_is_named():
    assert len(decoder_layers(llama("sdpa"))) == 2
    with pytest.raises(ModelError, match="decoder layers of Linear"):
        decoder_layers(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_compiled_layers_match_eager_values_and_gradients(tmp_path):
    script = Path(__file__).parent / "scripts" / "compiled_vs_eager.py"
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, timeout=600,
                   env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    results = torch.load(tmp_path / "results.pt")
    eager, compiled = results["eager"], results["compiled"]
    assert results["layers"] == 2
    for key in ("logps", "scores"):
        finite = torch.isfinite(eager[key])
        assert torch.equal(finite, torch.isfinite(compiled[key]))
        assert torch.allclose(compiled[key][finite], eager[key][finite], atol=1e-4, rtol=1e-5)
    assert set(eager["grads"]) == set(compiled["grads"]) and eager["grads"]
    assert max_relative(compiled["grads"], eager["grads"]) < 1e-4
    assert any((tmp_path / "inductor").iterdir())  # inductor's artefacts are cached there
    first_length, second_length = compiled["graphs_after_each_batch"]
    assert first_length > 0 and second_length == first_length  # a new length compiles nothing
    # Both layers share their training graphs (torch 2.13: 4; 7 while the first layer, fed
    # by frozen embeddings, had forward and backward graphs of its own), and their no-grad
    # graphs: scoring adds as many as training compiled.
    assert first_length == 4
    assert compiled["graphs_after_scoring"] == 2 * first_length
    assert eager["compile_s_after_each_batch"] == [0.0, 0.0]
    first_s, second_s = compiled["compile_s_after_each_batch"]
    assert first_s > 0 and second_s == first_s
    # The job's stage timer reports the compiling part of a stage, and only where there was one.
    timings = results["timings"]
    assert set(timings) == {"eager_s", "compiled_s", "compiled_compile_s"}
    assert 0 < timings["compiled_compile_s"] <= timings["compiled_s"]


class _TwoRows:
    """SFT micro-batches of two fixed rows (the real padding helper)."""

    def batch(self, step: int, micro: int, device) -> dict[str, torch.Tensor]:
        from eapo_exp.losses.sft import IGNORE_INDEX
        from eapo_exp.training.sft import pad_left

        inputs = [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14]]
        labels = [[IGNORE_INDEX] * 4 + [9, 10], [IGNORE_INDEX] * 2 + [13, 14]]
        return pad_left(inputs, labels, 0, device)


def test_sft_steps_build_no_kv_cache(tmp_path):
    """A KV cache in a training forward is wasted memory, and under torch.compile it makes
    dynamo specialise every decoder layer on its cache slot (30 graphs to trace, not 2)."""
    from eapo_exp.training.settings import LoopSettings
    from eapo_exp.training.sft import train_sft

    model = apply_lora(llama(attention.ATTENTION_NAME), r=4, alpha=8, dropout=0.0)
    caches = []
    model.get_base_model().register_forward_hook(
        lambda _module, _args, output: caches.append(output.past_key_values))
    train_sft(model, _TwoRows(), LoopSettings(total_steps=2),
              tmp_path / "ckpt", progress=False)
    assert len(caches) == 2 and all(cache is None for cache in caches)
