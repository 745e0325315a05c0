"""Prompt templates: seeded template sampling, truncation, errors, tokenization."""

from __future__ import annotations

import pytest

from eapo_exp.data.prompts import ANSWER_CUE, TEMPLATE_NAMES, TEMPLATES, PromptBuilder
from eapo_exp.data.schema import ItemCatalog
from eapo_exp.errors import ConfigError, DataError
from tests.conftest import byte_bpe_tokenizer

TITLES = [
    "Toy Story (1995)", "Heat (1995)", "Lion King, The (1994)", "Se7en (1995)",
    "Twelve Monkeys (1995)", "Babe (1995)", "Casino (1995)", "Jumanji (1995)",
    "Sabrina (1995)", "Nixon (1995)", "Balto (1995)", "Sudden Death (1995)",
]


def make_tokenizer():
    """Byte-level BPE (GPT-2 style) trained offline on the templates and test titles."""
    return byte_bpe_tokenizer(list(TEMPLATES.values()) + TITLES + [ANSWER_CUE, "movie movies item items"])


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def test_library_has_ten_templates_with_all_slots():
    assert len(TEMPLATE_NAMES) >= 10
    for name, text in TEMPLATES.items():
        for slot in ("{noun}", "{nouns}", "{history}", "{candidates}"):
            assert slot in text, (name, slot)


def test_template_sampling_deterministic_and_varied(tokenizer):
    a = PromptBuilder(tokenizer, item_noun="movie", seed=3)
    b = PromptBuilder(tokenizer, item_noun="movie", seed=3)
    c = PromptBuilder(tokenizer, item_noun="movie", seed=4)
    draws_a = [a.template_for(i, "train") for i in range(200)]
    assert draws_a == [b.template_for(i, "train") for i in range(200)]
    assert draws_a != [c.template_for(i, "train") for i in range(200)]
    assert len(set(draws_a)) == len(TEMPLATE_NAMES)  # varied across samples
    # Order independence: asking in reverse gives the same per-sample template.
    assert [a.template_for(i, "train") for i in reversed(range(200))] == draws_a[::-1]
    # Epochs redraw.
    assert draws_a != [a.template_for(i, "train", epoch=1) for i in range(200)]
    # Restricted training set.
    d = PromptBuilder(tokenizer, train_templates=["minimal", "friend"], seed=0)
    assert {d.template_for(i, "train") for i in range(50)} == {"minimal", "friend"}


def test_eval_template_fixed_and_random(tokenizer):
    fixed = PromptBuilder(tokenizer, eval_template="fixed:question")
    assert {fixed.template_for(i, "test") for i in range(20)} == {"question"}
    assert len({fixed.template_for(i, "train") for i in range(50)}) > 1
    rand = PromptBuilder(tokenizer, eval_template="random", seed=1)
    draws = [rand.template_for(i, "test") for i in range(50)]
    assert len(set(draws)) > 1 and draws == [rand.template_for(i, "test") for i in range(50)]


def test_unknown_template_names(tokenizer):
    with pytest.raises(ConfigError, match="valid names: .*minimal"):
        PromptBuilder(tokenizer, train_templates=["nope"])
    with pytest.raises(ConfigError, match="valid names"):
        PromptBuilder(tokenizer, eval_template="fixed:nope")
    with pytest.raises(ConfigError):
        PromptBuilder(tokenizer, eval_template="sometimes")
    builder = PromptBuilder(tokenizer)
    with pytest.raises(ConfigError, match="unknown prompt template 'nope'"):
        builder.build(["Heat (1995)"], ["Babe (1995)"], None, "nope")


def test_empty_title_is_data_error(tokenizer):
    builder = PromptBuilder(tokenizer)
    with pytest.raises(DataError):
        builder.build(["Heat (1995)"], ["Babe (1995)", "  "], None, "minimal")
    with pytest.raises(DataError):
        builder.build([""], ["Babe (1995)"], None, "minimal")


def test_build_completions_and_consistency(tokenizer):
    builder = PromptBuilder(tokenizer, item_noun="movie")
    cands = TITLES[6:12]
    for name in TEMPLATE_NAMES:
        ex = builder.build(TITLES[:5], cands, "Babe (1995)", name)
        assert ex.template == name and ex.dropped_history == 0
        assert ex.prompt_text.endswith(ANSWER_CUE)
        assert "movies" in ex.prompt_text and '"Toy Story (1995)"' in ex.prompt_text
        assert len(ex.completion_ids) == len(cands)
        assert all(c[-1] == tokenizer.eos_token_id for c in ex.completion_ids)
        assert ex.target_ids == builder.title_ids("Babe (1995)")
        assert ex.target_index is None  # Babe is not among these candidates
        assert builder.check_consistency(ex)
        decoded = tokenizer.decode(ex.completion_ids[0], skip_special_tokens=True)
        assert decoded == cands[0]
    ex = builder.build(TITLES[:3], cands, cands[2], "minimal")
    assert ex.target_index == 2
    assert builder.roundtrip_failures(TITLES) == []


def test_truncation_drops_oldest_history_keeps_candidates(tokenizer):
    cands = TITLES[6:12]
    history = TITLES[:6]
    full = PromptBuilder(tokenizer, max_prompt_tokens=10_000).build(
        history, cands, None, "task_format")
    none = PromptBuilder(tokenizer, max_prompt_tokens=10_000).build(
        [], cands, None, "task_format")
    limit = (len(full.prompt_ids) + len(none.prompt_ids)) // 2
    builder = PromptBuilder(tokenizer, max_prompt_tokens=limit)
    ex = builder.build(history, cands, None, "task_format")
    assert 0 < ex.dropped_history < len(history)
    assert len(ex.prompt_ids) <= limit
    kept = history[ex.dropped_history:]
    assert all(f'"{t}"' in ex.prompt_text for t in kept)
    assert all(f'"{t}"' not in ex.prompt_text for t in history[:ex.dropped_history])
    assert all(f'"{t}"' in ex.prompt_text for t in cands)
    # Minimal drop: keeping one more (older) title would not fit.
    longer = builder.render(history[ex.dropped_history - 1:], cands, "task_format")
    assert len(tokenizer(longer, add_special_tokens=False)["input_ids"]) > limit
    assert builder.stats == {"examples": 1, "truncated_examples": 1,
                             "dropped_history_items": ex.dropped_history}

    too_small = PromptBuilder(tokenizer, max_prompt_tokens=len(none.prompt_ids) - 1)
    with pytest.raises(ConfigError, match="raise max_prompt_tokens"):
        too_small.build(history, cands, None, "task_format")


def test_build_sample_uses_catalog_and_item_ids(tokenizer):
    catalog = ItemCatalog(raw_ids=[""] + [str(i) for i in range(1, 13)], titles=[""] + TITLES)
    sample = {"user": "u1", "history": [1, 2, 3], "target": 5, "candidates": [7, 5, 9],
              "timestamp": 0.0}
    builder = PromptBuilder(tokenizer, item_noun="movie", eval_template="fixed:minimal")
    ex = builder.build_sample(sample, catalog, "test", 0)
    assert ex.template == "minimal" and ex.target_index == 1
    assert ex.candidate_titles == [TITLES[6], TITLES[4], TITLES[8]]
    assert '"Toy Story (1995)", "Heat (1995)", "Lion King, The (1994)"' in ex.prompt_text


def test_a_title_has_one_set_of_ids_in_sft_preference_and_evaluation(tokenizer):
    from eapo_exp.training.preference_data import PreferenceExample, tokenize_example

    titles = [" Toy   Story (1995) ", "Heat (1995)", "Babe\t(1995)"]
    catalog = ItemCatalog(raw_ids=["", "1", "2", "3"], titles=["", *titles])
    sample = {"user": "u1", "history": [2], "target": 1, "candidates": [3, 1, 2],
              "timestamp": 0.0}
    builder = PromptBuilder(tokenizer, item_noun="movie")
    expected = builder.title_ids("Toy Story (1995)")
    # SFT trains on prompt_ids + target_ids of the training example (training.sft.SFTBatches).
    sft = builder.build_sample(sample, catalog, "train", sample_key=0).target_ids
    _, (chosen, *rejected) = tokenize_example(builder, catalog,
                                              PreferenceExample(row=0, sample=sample,
                                                                rejected=[3]))
    evaluation = builder.build_sample(sample, catalog, "test", 0)
    assert sft == chosen == evaluation.completion_ids[evaluation.target_index] == expected
    assert rejected == [evaluation.completion_ids[0]] == [builder.title_ids("Babe (1995)")]
    assert evaluation.candidate_titles[1] == "Toy Story (1995)"
