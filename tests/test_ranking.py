"""Candidate ranking: score, constrained beam and generate modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from eapo_exp.data.prompts import ANSWER_CUE, TEMPLATES, PromptBuilder
from eapo_exp.data.schema import ItemCatalog
from eapo_exp.evaluation import generate as generate_module
from eapo_exp.evaluation.constrained_beam import (
    beam_search_trie,
    constrained_beam_search,
    ranked_candidates,
)
from eapo_exp.evaluation.generate import match_candidate, normalize_title
from eapo_exp.evaluation.metrics import metrics_from_ranks, target_ranks
from eapo_exp.evaluation.modes import BeamMode, GenerateMode, ScoreMode
from eapo_exp.evaluation.ranking import rank_candidates
from eapo_exp.training.shared_prefix import naive_completion_logprobs
from tests.conftest import byte_bpe_tokenizer

TITLES = [
    "Toy Story (1995)", "Heat (1995)", "Lion King, The (1994)", "Se7en (1995)",
    "Twelve Monkeys (1995)", "Babe (1995)", "Casino (1995)", "Jumanji (1995)",
    "Sabrina (1995)", "Nixon (1995)", "Balto (1995)", "Sudden Death (1995)",
    "Heat (1995) Director's Cut", "Babe (1995)",  # a prefix-sharing title and a duplicate
]


def make_tokenizer():
    """Byte-level BPE (GPT-2 style) trained offline on the templates and test titles."""
    return byte_bpe_tokenizer(list(TEMPLATES.values()) + TITLES + [ANSWER_CUE, "movie movies"])


@pytest.fixture(scope="module")
def setup():
    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config)
    catalog = ItemCatalog(raw_ids=[""] + [str(i) for i in range(1, len(TITLES) + 1)],
                          titles=[""] + TITLES)
    rng = np.random.default_rng(0)
    samples = []
    for u in range(7):
        items = rng.permutation(np.arange(1, len(TITLES) + 1)).tolist()
        history, cands = items[:3], items[3:10]
        if u == 0:  # the duplicate title (items 6 and 14) and the shared prefix (2 and 13)
            cands = [6, 14, 2, 13, 5, 9, 11]
        samples.append({"user": f"u{u}", "history": history, "target": cands[u % len(cands)],
                        "candidates": cands, "timestamp": float(u)})
    builder = PromptBuilder(tokenizer, item_noun="movie", eval_template="random", seed=0)
    return tokenizer, model, catalog, samples, builder


def test_score_mode_equals_sorted_naive_loglik(setup):
    tokenizer, model, catalog, samples, builder = setup
    metrics, preds = rank_candidates(model, builder, samples, catalog, ScoreMode(),
                                     batch_size=3, progress=False)
    examples = [builder.build_sample(s, catalog, "test", i) for i, s in enumerate(samples)]
    with torch.no_grad():
        naive = naive_completion_logprobs(model, [e.prompt_ids for e in examples],
                                          [e.completion_ids for e in examples],
                                          tokenizer.pad_token_id).logprobs.numpy()
    targets = np.array([e.target_index for e in examples])
    ranks = target_ranks(naive, targets)
    expected = metrics_from_ranks(ranks, ks=(1, 5))
    for key in ("hr@1", "hr@5", "ndcg@5", "n"):
        assert metrics[key] == pytest.approx(expected[key])
    for pred, ex, row, rank in zip(preds, examples, naive, ranks):
        order = np.argsort(-row, kind="stable")[:5]
        assert pred["ranked_titles"] == [ex.candidate_titles[k] for k in order]
        assert pred["target_rank"] == rank
        assert pred["template"] == ex.template
        assert np.allclose(pred["scores"], row, atol=1e-4)
    assert len({p["template"] for p in preds}) > 1  # random eval templates
    # The duplicate title ties exactly: its two items are adjacent in the ranking.
    dup = preds[0]["scores"]
    assert dup[0] == pytest.approx(dup[1], abs=1e-4)
    assert metrics["mode"] == "score" and metrics["valid_ratio"] == 1.0


def test_beam_returns_only_candidates_and_matches_exhaustive(setup):
    tokenizer, model, catalog, samples, builder = setup
    metrics, preds = rank_candidates(model, builder, samples, catalog, BeamMode(beam_width=5),
                                     batch_size=4, progress=False)
    for pred, sample in zip(preds, samples):
        cand_titles = {catalog.title(i) for i in sample["candidates"]}
        assert 1 <= len(pred["ranked_titles"]) <= 5
        assert set(pred["ranked_titles"]) <= cand_titles
        assert set(pred["ranked_items"]) <= set(sample["candidates"])
        # The reported rank is the target's place in the returned list (0: not in it).
        items = pred["ranked_items"]
        target = sample["target"]
        assert pred["target_rank"] == (items.index(target) + 1 if target in items else 0)
    ranks = np.array([p["target_rank"] for p in preds])
    assert metrics["n"] == len(samples)
    assert metrics["hr@1"] == pytest.approx(np.mean(ranks == 1))
    assert metrics["hr@5"] == pytest.approx(np.mean((ranks >= 1) & (ranks <= 5)))

    # With a beam as wide as the candidate set nothing is pruned: order = score order, and
    # beam mode reports the exhaustive ranking's target rank.
    _, scored = rank_candidates(model, builder, samples, catalog, ScoreMode(), progress=False)
    _, wide = rank_candidates(model, builder, samples, catalog, BeamMode(beam_width=21),
                              batch_size=4, progress=False)
    assert [p["target_rank"] for p in wide] == [p["target_rank"] for p in scored]
    assert any(p["target_rank"] > 5 for p in scored)  # ranks beyond a width-5 beam occur
    examples = [builder.build_sample(s, catalog, "test", i) for i, s in enumerate(samples)]
    hyps = constrained_beam_search(model, [e.prompt_ids for e in examples],
                                   [e.completion_ids for e in examples],
                                   tokenizer.pad_token_id, beam_width=20)
    for ex, hyp, pred in zip(examples, hyps, scored):
        order = ranked_candidates(hyp)
        assert sorted(order) == list(range(len(ex.completion_ids)))
        beam_scores = [h.score for h in hyp]
        assert beam_scores == sorted(beam_scores, reverse=True)
        best = np.array(pred["scores"])[order]
        assert np.all(np.diff(best) <= 1e-4)


def test_beam_search_is_not_exhaustive_greedy_trap():
    # Candidate 0: tokens (1, 9) with log-probs (-0.1, -5.0); candidate 1: (2, 9) with
    # (-1.0, -0.1); candidate 2: (3, 9) with (-2.0, -0.1). Best total is candidate 1.
    comps = [[1, 9], [2, 9], [3, 9]]
    lps = [[-0.1, -5.0], [-1.0, -0.1], [-2.0, -0.1]]
    assert [h.candidates for h in beam_search_trie(comps, lps, 1)] == [(0,)]
    wide = beam_search_trie(comps, lps, 2)
    assert [h.candidates for h in wide] == [(1,), (0,)]
    assert wide[0].score == pytest.approx(-1.1)
    # Shared prefixes and duplicates: (1, 9) and (1, 9) share a leaf; (1, 4, 9) branches.
    comps = [[1, 9], [1, 4, 9], [1, 9]]
    lps = [[-0.5, -0.2], [-0.5, -1.0, -0.3], [-0.5, -0.2]]
    hyps = beam_search_trie(comps, lps, 5)
    assert [h.candidates for h in hyps] == [(0, 2), (1,)]
    assert ranked_candidates(hyps, target_index=0) == [2, 0, 1]


def test_generate_metrics_hand_built(setup, monkeypatch):
    tokenizer, model, catalog, samples, builder = setup
    chosen = samples[1:5]
    outputs = []
    for i, s in enumerate(chosen):
        target = catalog.title(s["target"])
        other = next(catalog.title(c) for c in s["candidates"]
                     if catalog.title(c) != target)
        text = [target, other, "no such film", f"  {target.upper()}. "][i]
        outputs.append(tokenizer(text, add_special_tokens=False)["input_ids"])

    def fake_generate(model, prompts, pad_id, eos_id, max_new_tokens):
        assert len(prompts) == len(chosen) and max_new_tokens > 0
        return outputs

    monkeypatch.setattr(generate_module, "greedy_generate", fake_generate)
    metrics, preds = rank_candidates(model, builder, chosen, catalog, GenerateMode(),
                                     batch_size=8, progress=False)
    assert metrics["hr@1"] == pytest.approx(0.5)  # all samples, invalid = miss
    assert metrics["valid_ratio"] == pytest.approx(0.75)
    assert metrics["hr@1_valid"] == pytest.approx(2 / 3)
    assert "all_samples" in metrics["hr1_convention"]
    assert [p["valid"] for p in preds] == [True, True, False, True]
    assert [p["target_rank"] for p in preds] == [1, 0, 0, 1]
    assert preds[2]["generated"] == "no such film" and preds[2]["ranked_titles"] == []


def test_generate_mode_runs_with_real_decoding(setup):
    _, model, catalog, samples, builder = setup
    model.train()
    metrics, preds = rank_candidates(model, builder, samples[:3], catalog,
                                     GenerateMode(max_new_tokens=6), batch_size=2,
                                     progress=False)
    assert metrics["n"] == 3 and 0.0 <= metrics["valid_ratio"] <= 1.0
    assert all(isinstance(p["generated"], str) for p in preds)
    assert model.training is True  # restored after evaluating in eval mode
    model.eval()


def test_normalize_and_match():
    assert normalize_title('  "Toy  Story (1995)". ') == "toy story (1995)"
    assert match_candidate("heat (1995)\nmore text", ["Babe (1995)", "Heat (1995)"]) == 1
    assert match_candidate("Heat", ["Heat (1995)"]) is None
    assert match_candidate("", ["Heat (1995)"]) is None
