"""Zero-shot chat LLMs: prompts go through the tokenizer's own chat template (here
SmolLM2-135M-Instruct's, read from its packaged GGUF) in score, beam and generate mode."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch

from eapo_exp.backbones.smollm2 import SmolLM2Backbone
from eapo_exp.data.prompts import ANSWER_CUE, PromptBuilder
from eapo_exp.data.schema import ItemCatalog
from eapo_exp.errors import ConfigError
from eapo_exp.evaluation.modes import BeamMode, GenerateMode, ScoreMode
from eapo_exp.evaluation.ranking import rank_candidates
from eapo_exp.pipeline import run_stages
from eapo_exp.tracking import RunTracker
from tests.conftest import byte_bpe_tokenizer

CATALOG = ItemCatalog(raw_ids=[str(i) for i in range(8)],
                      titles=["", "Toy Story (1995)", "Babe (1995)", "Scream (1996)",
                              "Titanic (1997)", "Heat (1995)", "Fargo (1996)",
                              "Star Wars (1977)"])
ROWS = [{"user": "u", "history": [1, 2], "target": 4, "candidates": [3, 4, 5, 6]},
        {"user": "v", "history": [7], "target": 6, "candidates": [6, 1, 2, 5]}]


@pytest.fixture(scope="module")
def smollm2(smollm2_copy):
    return SmolLM2Backbone(cache_dir=str(smollm2_copy.parent), dtype="float32").load()


def _builder(tokenizer, mode):
    return PromptBuilder(tokenizer, item_noun="movie", eval_template="fixed:chronological",
                         chat_template=mode)


def _chat_ids(tokenizer, content):
    out = tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                        tokenize=True, add_generation_prompt=True)
    return list(out["input_ids"] if isinstance(out, Mapping) else out)


@pytest.mark.slow
def test_prompt_is_the_models_own_chat_template(smollm2):
    tok = smollm2.tokenizer
    assert tok.chat_template  # SmolLM2-Instruct ships one
    chat, plain = _builder(tok, "auto"), _builder(tok, "off")
    assert chat.uses_chat_template and not plain.uses_chat_template
    example = chat.build_sample(ROWS[0], CATALOG, "test", 0)
    body = plain.build_sample(ROWS[0], CATALOG, "test", 0).prompt_text
    assert body.endswith(ANSWER_CUE) and "<|im_start|>" not in body
    body = body.removesuffix(ANSWER_CUE)
    assert example.prompt_text.startswith("<|im_start|>system\n")
    assert example.prompt_text.endswith(f"<|im_start|>user\n{body}<|im_end|>\n"
                                        "<|im_start|>assistant\n")
    assert example.prompt_ids == _chat_ids(tok, body)
    # A completion ends the assistant turn: SmolLM2-Instruct's EOS is <|im_end|>.
    assert tok.convert_ids_to_tokens(example.completion_ids[0][-1]) == "<|im_end|>"
    assert chat.check_consistency(example)


def test_chat_template_off_auto_on_without_a_template():
    tok = byte_bpe_tokenizer(CATALOG.titles[1:])
    assert not getattr(tok, "chat_template", None)
    assert not _builder(tok, "auto").uses_chat_template
    with pytest.raises(ConfigError, match="no chat template"):
        _builder(tok, "on")
    with pytest.raises(ConfigError, match="chat_template must be one of"):
        _builder(tok, "yes")


def _logprob(model, prompt_ids, completion_ids) -> float:
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    picked = logp.gather(-1, ids[0, 1:, None])[:, 0]
    return picked[len(prompt_ids) - 1:].sum().item()


@pytest.mark.slow
def test_every_mode_ranks_through_the_chat_template(smollm2):
    tok, model = smollm2.tokenizer, smollm2.model
    builder = _builder(tok, "auto")
    for mode in (ScoreMode(), BeamMode(), GenerateMode(max_new_tokens=12)):
        metrics, predictions = rank_candidates(model, builder, ROWS, CATALOG, mode,
                                               batch_size=2, progress=False)
        assert metrics["chat_template"] is True and metrics["n"] == 2, mode.name
        assert all(0 <= p["target_rank"] <= 4 for p in predictions)
        if mode.name == "score":
            scores = predictions[0]["scores"]
        if mode.name == "generate":
            assert all(isinstance(p["generated"], str) for p in predictions)
    # Score mode's log p(title + EOS | prompt) is the one under the chat-template prompt.
    example = builder.build_sample(ROWS[0], CATALOG, "test", 0)
    direct = _logprob(model, example.prompt_ids, example.completion_ids[1])
    assert scores[1] == pytest.approx(direct, abs=2e-3)
    plain = _builder(tok, "off").build_sample(ROWS[0], CATALOG, "test", 0)
    assert abs(_logprob(model, plain.prompt_ids, plain.completion_ids[1]) - direct) > 1e-2


@pytest.mark.slow
def test_zero_shot_job_uses_the_chat_template_unless_off(fast_config, smollm2_copy, tmp_path):
    # train=zero_shot too: the FAST overrides' train=smoke would outrank the preset's.
    common = ["method=zero_shot", "train=zero_shot", "backbone=hf",
              f"backbone.loader.name_or_path={smollm2_copy}", "backbone.loader.dtype=float32",
              "eval.splits=[test]", "eval.max_samples=2"]
    for setting, expected in (([], True), (["prompt.chat_template=off"], False)):
        out = tmp_path / str(expected)
        out.mkdir()
        cfg = fast_config(*common, *setting, cache=tmp_path / "cache")
        metrics = run_stages(cfg, RunTracker(out), out)
        result = metrics["eval"]["zero_shot"]["test"]
        assert result["chat_template"] is expected and result["n"] == 2
