"""ChatRec against a real OpenAI-compatible server: `transformers serve` on 127.0.0.1 serving
the packaged SmolLM2-135M-Instruct copy (one server per module), plus the reply parser on
hand-written replies."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eapo_exp.chatrec import ChatEndpoint, ChatEndpointError
from eapo_exp.chatrec.prompt import build_messages, parse_ranking, ranking_scores
from eapo_exp.chatrec.server import LocalServer, free_port
from eapo_exp.chatrec.stage import rank_with_endpoint
from eapo_exp.data.schema import ItemCatalog
from eapo_exp.errors import ConfigError, EapoError
from eapo_exp.evaluation.metrics import target_ranks
from eapo_exp.pipeline import run_stages
from eapo_exp.tracking import RunTracker
from eapo_exp.validation import validate_config

CANDIDATES = ["Toy Story (1995)", "Usual Suspects, The (1995)", "Babe (1995)",
              "Babe: Pig in the City (1998)", "Seven (Se7en) (1995)", "Heat (1995)",
              "Heat (1986)"]


def _rank_of(reply: str, target: int, titles=CANDIDATES) -> int:
    scores = ranking_scores(parse_ranking(reply, titles), len(titles))
    return int(target_ranks(scores[None, :], np.array([target]))[0])


# ---------------------------------------------------------------- parser (no server)
def test_numbered_list_gives_the_order():
    reply = ("Here is my ranking:\n1. Babe (1995)\n2. Toy Story (1995)\n"
             "3. Usual Suspects, The (1995)\n")
    assert parse_ranking(reply, CANDIDATES) == [[2], [0], [1]]


def test_titles_match_after_normalisation():
    reply = ('1) "TOY   STORY (1995)".\n2. the usual suspects\n'
             "3. \u201cSeven (Se7en)\u201d - a thriller\n- babe: pig in the city")
    assert parse_ranking(reply, CANDIDATES) == [[0], [1], [4], [3]]


def test_longer_title_wins_and_ambiguous_short_forms_do_not_match():
    # "Babe" inside "Babe: Pig in the City" is not a second match; "Heat" without a year
    # could be either Heat, so it names neither.
    assert parse_ranking("Babe: Pig in the City (1998), then Babe", CANDIDATES) == [[3], [2]]
    assert parse_ranking("I would pick Heat.", CANDIDATES) == []
    assert parse_ranking("Heat (1986) and Heat (1995)", CANDIDATES) == [[6], [5]]


def test_partial_answer_ranks_the_rest_last_with_pessimistic_ties():
    reply = "1. Heat (1995)\n2. Toy Story (1995)\n3. Babe ("  # cut off mid-title
    assert parse_ranking(reply, CANDIDATES) == [[5], [0], [2]]
    assert _rank_of(reply, target=0) == 2
    # Not named: tied with every other unnamed candidate, counted below them all.
    assert _rank_of(reply, target=4) == len(CANDIDATES)


def test_reply_naming_no_candidate_ranks_the_target_last():
    for reply in ("", "I cannot help with that.", "1. Star Wars (1977)", "1."):
        assert parse_ranking(reply, CANDIDATES) == []
        assert _rank_of(reply, target=0) == len(CANDIDATES)


def test_repeated_titles_tie():
    titles = ["Hamlet (1996)", "Hamlet (1996)", "Emma (1996)"]
    assert parse_ranking("Hamlet (1996)\nEmma (1996)", titles) == [[0, 1], [2]]
    assert _rank_of("Hamlet (1996)", target=0, titles=titles) == 2


def test_prompt_lists_history_and_candidates():
    (message,) = build_messages(["Heat (1995)"], CANDIDATES, "movie")
    assert message["role"] == "user"
    assert "- Heat (1995)\n" in message["content"]
    assert "7 candidate movies" in message["content"]
    assert all(f"- {t}" in message["content"] for t in CANDIDATES)
    assert "(none yet)" in build_messages([], CANDIDATES, "movie")[0]["content"]


# ---------------------------------------------------------------- config checks (no server)
def test_config_is_checked_at_startup(fast_config, monkeypatch):
    monkeypatch.delenv("EAPO_TEST_CHATREC_KEY", raising=False)
    with pytest.raises(ConfigError, match="chatrec.model is empty"):
        validate_config(fast_config("method=chatrec"))
    with pytest.raises(ConfigError, match="EAPO_TEST_CHATREC_KEY, which is not set"):
        validate_config(fast_config("method=chatrec", "chatrec.model=m",
                                    "chatrec.api_key_env=EAPO_TEST_CHATREC_KEY"))
    with pytest.raises(ConfigError, match="name of an environment variable") as info:
        validate_config(fast_config("method=chatrec", "chatrec.model=m",
                                    "chatrec.api_key_env=sk-abc123-secret"))
    assert "sk-abc123" not in str(info.value)
    with pytest.raises(ConfigError, match="http"):
        validate_config(fast_config("method=chatrec", "chatrec.model=m",
                                    "chatrec.base_url=localhost:8000"))


# ---------------------------------------------------------------- against the real server
@pytest.fixture(scope="module")
def server(smollm2_copy, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    with LocalServer(smollm2_copy, log_path=log_path, startup_timeout=120) as running:
        yield running


def chatrec_overrides(server, *extra):
    return ["method=chatrec", f"chatrec.base_url={server.base_url}",
            f"chatrec.model={server.model}", "chatrec.max_tokens=40", "chatrec.concurrency=2",
            "chatrec.timeout=180", "eval.splits=[valid,test]", "eval.max_samples=2",
            *extra]


def run(cfg, out):
    out.mkdir(parents=True, exist_ok=True)
    validate_config(cfg)
    return run_stages(cfg, RunTracker(out), out)


@pytest.mark.slow
def test_full_evaluation_and_rerun_from_the_cache(server, fast_config, tmp_path, monkeypatch):
    secret = "sk-eapo-test-not-a-real-key-0123456789"
    monkeypatch.setenv("EAPO_TEST_CHATREC_KEY", secret)
    cache = tmp_path / "cache"
    cfg = fast_config(*chatrec_overrides(server, "chatrec.api_key_env=EAPO_TEST_CHATREC_KEY"),
                      cache=cache)
    first = run(cfg, tmp_path / "first")
    assert first["method"] == "ChatRec" and set(first["eval"]) == {"chatrec"}
    for split in ("valid", "test"):
        metrics = first["eval"]["chatrec"][split]
        assert metrics["n"] == 2
        for key in ("ndcg@5", "hr@1_valid"):
            assert 0.0 <= metrics[key] <= 1.0
        assert metrics["prompt_tokens"] > 2 * 100 and metrics["completion_tokens"] > 0
        assert metrics["endpoint"]["requests"] == 2 and metrics["endpoint"]["cached"] == 0
        rows = [json.loads(line) for line in
                (tmp_path / "first" / f"predictions_chatrec_{split}.jsonl").read_text()
                .splitlines()]
        assert len(rows) == 2
        for row in rows:
            assert 1 <= row["target_rank"] <= 21 and row["reply"]
            assert row["valid"] == bool(row["ranked_items"])
        # The metrics are those of the rows written.
        ranks = np.array([row["target_rank"] for row in rows])
        assert metrics["hr@1"] == pytest.approx(np.mean(ranks == 1))
        assert metrics["hr@5"] == pytest.approx(np.mean(ranks <= 5))
        assert metrics["valid_ratio"] == pytest.approx(np.mean([row["valid"] for row in rows]))

    # The same samples as every other method: a zero-shot job ranks the same (user, target).
    zero_shot = run(fast_config("stage=sft", "train=zero_shot", "eval.splits=[test]",
                                "eval.max_samples=2", cache=cache), tmp_path / "zero_shot")
    assert zero_shot["eval"]["zero_shot"]["test"]["n"] == 2
    ids = {split: [(r["user"], r["target"]) for r in map(json.loads, (
        tmp_path / name / f"predictions_{label}_test.jsonl").read_text().splitlines())]
        for split, name, label in (("c", "first", "chatrec"), ("z", "zero_shot", "zero_shot"))}
    assert ids["c"] == ids["z"]

    second = run(cfg, tmp_path / "second")
    for split in ("valid", "test"):
        again, before = second["eval"]["chatrec"][split], first["eval"]["chatrec"][split]
        assert again["endpoint"]["requests"] == again["endpoint"]["http_requests"] == 0
        assert again["endpoint"]["cached"] == 2
        for key in ("hr@1", "hr@5", "ndcg@5", "valid_ratio", "prompt_tokens"):
            assert again[key] == before[key]
    # The key is never written: not in outputs, configs or the reply cache.
    for path in [*tmp_path.rglob("*")]:
        if path.is_file():
            assert secret not in path.read_text(errors="ignore"), path


MOVIES = ItemCatalog(raw_ids=[str(i) for i in range(8)],
                     titles=["", "Toy Story (1995)", "Babe (1995)", "Scream (1996)",
                             "Titanic (1997)", "Heat (1995)", "Fargo (1996)",
                             "Star Wars (1977)"])
MOVIE_ROWS = [{"user": "u", "history": [1, 2], "target": 4, "candidates": [3, 4, 5, 6, 7]}]


def _rank_movies(server, tmp_path, max_tokens):
    endpoint = ChatEndpoint(server.base_url, server.model, max_tokens=max_tokens,
                            cache_dir=str(tmp_path / "replies"))
    try:
        return rank_with_endpoint(endpoint, MOVIE_ROWS, MOVIES, "movie")
    finally:
        endpoint.close()


@pytest.mark.slow
def test_reply_that_names_no_candidate_is_invalid(server, tmp_path):
    # One token cannot spell a whole title.
    metrics, (row,) = _rank_movies(server, tmp_path, max_tokens=1)
    assert row["valid"] is False and row["ranked_items"] == [] and row["target_rank"] == 5
    assert metrics["valid_ratio"] == 0.0 and metrics["hr@1"] == 0.0
    assert metrics["completion_tokens"] == 1 and metrics["truncated_replies"] == 1


@pytest.mark.slow
def test_real_reply_is_parsed_into_a_ranking(server, tmp_path):
    # SmolLM2 copies famous titles from the list: its reply ranks some candidates.
    metrics, (row,) = _rank_movies(server, tmp_path, max_tokens=48)
    assert row["valid"] is True and metrics["valid_ratio"] == 1.0, row["reply"]
    named = row["ranked_items"]
    assert named and set(named) <= set(MOVIE_ROWS[0]["candidates"])
    expected = named.index(4) + 1 if 4 in named[:5] else None
    assert row["target_rank"] == expected or (expected is None and row["target_rank"] >= 2)


def test_server_down_gives_one_clear_error(fast_config, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    cfg = fast_config("method=chatrec", f"chatrec.base_url={url}", "chatrec.model=m",
                      "chatrec.retries=1", "chatrec.timeout=5", "eval.splits=[test]",
                      "eval.max_samples=3", "chatrec.concurrency=1", cache=tmp_path / "cache")
    with pytest.raises(ChatEndpointError) as info:
        run(cfg, tmp_path / "out")
    assert isinstance(info.value, EapoError)
    message = str(info.value)
    assert url in message and "cannot reach" in message and "\n" not in message
    assert "2 tries" in message
