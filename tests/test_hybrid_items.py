"""LLaRA's hybrid item representation: slot ids in prompts, the projected embedding layer, the
projector travelling with the adapter, and the SFT curriculum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from eapo_exp.backbones import hybrid_items
from eapo_exp.backbones.lora import apply_lora, load_adapter, save_adapter
from eapo_exp.data.curriculum import HybridCurriculum
from eapo_exp.data.prompts import ANSWER_CUE, TEMPLATES, PromptBuilder
from eapo_exp.errors import ConfigError
from eapo_exp.stages.llm import check_item_repr
from tests.conftest import byte_bpe_tokenizer

TITLES = ["Toy Story (1995)", "Heat (1995)", "Fargo (1996)", "Alien (1979)", "Babe (1995)"]


@pytest.fixture(scope="module")
def tokenizer():
    return byte_bpe_tokenizer(list(TEMPLATES.values()) + TITLES + [ANSWER_CUE, "movie movies"])


def slots(ids):
    return [-i - 1 for i in ids if i < 0]


def test_every_history_and_candidate_title_gets_its_slot(tokenizer):
    builder = PromptBuilder(tokenizer, item_noun="movie", item_repr="hybrid")
    history, candidates = [4, 7], [1, 9, 3]
    hybrid = builder.build(TITLES[:2], TITLES[2:], TITLES[3], "chronological",
                           history_items=history, candidate_items=candidates)
    text = builder.build(TITLES[:2], TITLES[2:], TITLES[3], "chronological")
    assert slots(hybrid.prompt_ids) == history + candidates  # the template lists history first
    assert slots(text.prompt_ids) == []
    # Removing the slots leaves the text prompt up to tokenization at the slot boundaries;
    # the completions (what is scored) are the same titles either way.
    assert hybrid.completion_ids == text.completion_ids
    assert hybrid.target_index == text.target_index == 1
    assert builder.check_consistency(hybrid)


def test_truncation_drops_history_slots_with_their_titles(tokenizer):
    builder = PromptBuilder(tokenizer, item_noun="movie", item_repr="hybrid")
    full = builder.build(TITLES[:3], TITLES[3:], None, "minimal", [1, 2, 3], [4, 5])
    short = PromptBuilder(tokenizer, item_noun="movie", item_repr="hybrid",
                          max_prompt_tokens=len(full.prompt_ids) - 1)
    cut = short.build(TITLES[:3], TITLES[3:], None, "minimal", [1, 2, 3], [4, 5])
    assert cut.dropped_history >= 1
    assert slots(cut.prompt_ids) == [1, 2, 3][cut.dropped_history:] + [4, 5]


def test_unknown_item_repr_is_rejected(tokenizer):
    with pytest.raises(ConfigError, match="item_repr"):
        PromptBuilder(tokenizer, item_repr="embedding")


def tiny_llama(tied: bool) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied))


def test_slots_read_the_projected_item_and_train_the_projector():
    model = tiny_llama(tied=True)
    tokens = model.get_input_embeddings()
    table = torch.randn(11, 8)
    hybrid_items.install(model, table, seed=1)
    embedding = model.get_input_embeddings()
    ids = torch.tensor([[5, hybrid_items.slot_id(3), 7, hybrid_items.slot_id(10)]])
    out = embedding(ids)
    assert torch.equal(out[0, 0], tokens.weight[5]) and torch.equal(out[0, 2], tokens.weight[7])
    projected = embedding.item_projector(torch.tensor([3, 10]))
    assert torch.allclose(out[0, [1, 3]], projected)
    model(input_ids=ids).logits.sum().backward()
    assert embedding.item_projector.mlp[0].weight.grad.abs().sum() > 0
    with pytest.raises(Exception, match="knows 10 items"):
        embedding(torch.tensor([[hybrid_items.slot_id(11)]]))


@pytest.mark.parametrize("modules_to_save", [[], ["embed_tokens", "lm_head"]])
def test_projector_travels_with_the_adapter(tmp_path, modules_to_save):
    model = tiny_llama(tied=not modules_to_save)
    hybrid_items.install(model, torch.randn(11, 8), seed=1)
    peft_model = apply_lora(model, r=4, alpha=8, dropout=0.0, target_modules=["q_proj"],
                            modules_to_save=hybrid_items.modules_to_save(modules_to_save))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any("item_projector" in n and "mlp.0.weight" in n for n in trainable)
    with torch.no_grad():  # a trained projector differs from any fresh one
        for name, param in peft_model.named_parameters():
            if "item_projector" in name and param.requires_grad:
                param.add_(0.5)
    ids = torch.tensor([[5, hybrid_items.slot_id(3), 7, 2]])
    expected = peft_model(input_ids=ids).logits
    save_adapter(peft_model, tmp_path)
    assert (tmp_path / hybrid_items.SHAPES_FILE).is_file()

    loaded = load_adapter(tiny_llama(tied=not modules_to_save), tmp_path)
    assert hybrid_items.find_projector(loaded) is not None
    assert torch.equal(loaded(input_ids=ids).logits, expected)


def test_text_adapter_loads_without_a_projector(tmp_path, tokenizer):
    peft_model = apply_lora(tiny_llama(tied=True), r=4, alpha=8, dropout=0.0,
                            target_modules=["q_proj"])
    save_adapter(peft_model, tmp_path)
    assert not (tmp_path / hybrid_items.SHAPES_FILE).exists()
    text_model = load_adapter(tiny_llama(tied=True), tmp_path)
    assert hybrid_items.find_projector(text_model) is None
    hybrid_model = tiny_llama(tied=True)
    hybrid_items.install(hybrid_model, torch.randn(5, 4), seed=0)
    title, hybrid = (PromptBuilder(tokenizer, item_repr=r) for r in ("title", "hybrid"))
    check_item_repr(text_model, title, tmp_path)
    check_item_repr(hybrid_model, hybrid, tmp_path)
    with pytest.raises(ConfigError, match="no item projector"):
        check_item_repr(text_model, hybrid, tmp_path)
    with pytest.raises(ConfigError, match="set prompt.item_repr=hybrid"):
        check_item_repr(hybrid_model, title, tmp_path)


def test_curriculum_moves_from_text_to_hybrid():
    curriculum = HybridCurriculum(start_share=0.0, ramp_fraction=0.5, seed=3)
    assert curriculum.share(0, 100) == 0.0
    assert curriculum.share(25, 100) == pytest.approx(0.5)
    assert curriculum.share(50, 100) == curriculum.share(99, 100) == 1.0
    assert not any(curriculum.is_hybrid(0, 100, key, 0) for key in range(200))
    assert all(curriculum.is_hybrid(60, 100, key, 0) for key in range(200))
    middle = sum(curriculum.is_hybrid(25, 100, key, 0) for key in range(2000)) / 2000
    assert 0.45 < middle < 0.55
    # A draw depends on (seed, sample, epoch), not on when or where it is asked.
    assert ([curriculum.is_hybrid(25, 100, k, 1) for k in range(50)]
            == [HybridCurriculum(0.0, 0.5, 3).is_hybrid(25, 100, k, 1) for k in range(50)])
    with pytest.raises(ConfigError, match="start_share"):
        HybridCurriculum(start_share=1.5)


def test_llara_sft_then_eapo_on_it_in_every_eval_mode(fast_config, tmp_path):
    """method=llara trains LoRA + projector (its weights travel with the adapter); EAPO starts
    from that SFT model by one override; beam and generate read the same hybrid prompts."""
    from safetensors.torch import load_file

    from eapo_exp.pipeline import run_stages
    from eapo_exp.tracking import RunTracker

    def run(*overrides, out):
        out.mkdir(parents=True)
        return run_stages(fast_config(*overrides, cache=tmp_path / "cache"), RunTracker(out), out)

    sft = run("method=llara", "eval.max_samples=12", "eval.splits=[test]", out=tmp_path / "sft")
    adapter = sft["sft"]["adapter"]
    weights = load_file(f"{adapter}/adapter_model.safetensors")
    projector = [k for k in weights if "item_projector" in k and "mlp.0.weight" in k]
    assert projector
    assert sft["eval"]["llara"]["test"]["n"] == 12
    ea = run("method=eapo", "prompt.item_repr=hybrid", "eval.max_samples=12",
             "eval.splits=[test]", "train.preference.max_train_samples=16",
             "train.preference.max_steps=2", out=tmp_path / "eapo")
    assert ea["sft"]["adapter"] == adapter  # the LLaRA SFT model, reused
    assert ea["eval"]["eapo"]["test"]["n"] == 12
    assert np.isfinite(np.load(tmp_path / "eapo" / "train_betas.npy")).all()
    for mode in ("beam", "generate"):
        result = run("method=llara", f"eval={mode}", "eval.max_samples=6", "eval.splits=[test]",
                     out=tmp_path / mode)
        assert result["eval"]["llara"]["test"]["n"] == 6


def test_item_expert_can_stay_fixed_while_the_beta_expert_changes(fast_config):
    """prompt.item_expert_data_fraction pins the expert behind the hybrid slots, so an
    expert-quality sweep (expert.data_fraction) keeps one SFT model; null follows `expert`."""
    from types import SimpleNamespace

    from eapo_exp.stages.sft_stage import sft_spec
    from eapo_exp.validation import validate_prompt

    samples = SimpleNamespace(fingerprint="samples")

    def spec(*overrides):
        return sft_spec(fast_config("method=llara", *overrides), samples)

    full = spec()
    assert spec("expert.data_fraction=0.5", "prompt.item_expert_data_fraction=1.0") == full
    assert spec("expert.data_fraction=0.5") != full
    assert spec("prompt.item_expert_data_fraction=0.5") == spec("expert.data_fraction=0.5")
    with pytest.raises(ConfigError, match="prompt.item_expert_data_fraction"):
        validate_prompt(fast_config("method=llara", "prompt.item_expert_data_fraction=1.5").prompt)
