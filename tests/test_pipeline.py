"""End-to-end jobs on synthetic data with the tiny backbone (seconds each)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eapo_exp.beta.critical_point import critical_z
from eapo_exp.pipeline import run_stages
from eapo_exp.report import stats
from eapo_exp.tracking import RunTracker


def run(cfg, out):
    out.mkdir(parents=True, exist_ok=True)
    return run_stages(cfg, RunTracker(out), out)


def test_expert_stage_beats_popularity(fast_config, tmp_path):
    metrics = run(fast_config("stage=expert"), tmp_path / "out")
    for split in ("valid", "test"):
        for key in ("hr@1", "hr@5", "ndcg@5"):
            assert metrics["expert"][split][key] > metrics["popularity"][split][key]
    assert metrics["data"]["samples"]["train"] > 0


def test_sft_lowers_loss_and_ranks_every_sample(fast_config, tmp_path):
    # Seconds-long smoke SFT: the loss falls and every sample gets a well-formed rank. (Too
    # few steps to learn the history -> candidate link; the next test checks that.)
    out = tmp_path / "out"
    metrics = run(fast_config("stage=sft", "eval.max_samples=80"), out)
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in history if h["phase"] == "sft"]
    assert losses[-1] < losses[0] - 2.0
    predictions = (out / "predictions_sft_test.jsonl").read_text().splitlines()
    assert len(predictions) == metrics["eval"]["sft"]["test"]["n"] == 80
    ranks = [json.loads(p)["target_rank"] for p in predictions]
    assert all(1 <= r <= 21 for r in ranks)


# Users who never leave their item group (drift 0, fewer interactions than a group has
# items), one prompt template and ~660 steps: enough for the random-init tiny model to learn
# to pick the candidate whose title words match the history's group. Measured on up to 200
# test samples with seed = dataset.source.seed = 0, 1, 2, 3: HR@1 0.16, 0.39, 0.49, 0.49 with
# the LoRA initialised from the config seed. Seed 0 is the run that learns least (its 0.16 was one
# standard error above the old bar of 0.12), so the test uses seed 2, far from its bar. With
# all 12 templates (6 epochs: 0.10) or 4 epochs (0.11-0.16) it learns far less.
LEARNABLE = [
    "seed=2", "dataset.source.seed=2",
    "dataset.source.num_items=120", "dataset.source.interactions_per_user=10",
    "dataset.source.drift=0.0", "prompt.train_templates=[minimal]",
    "prompt.eval_template=fixed:minimal", "train.sft.max_train_samples=0",
    "train.sft.epochs=6", "train.sft.lr=3e-3", "eval.max_samples=200",
]


def test_tiny_sft_lifts_hr1_well_above_chance(fast_config, tmp_path):
    cache = tmp_path / "cache"
    trained = run(fast_config("stage=sft", *LEARNABLE, cache=cache), tmp_path / "sft")
    untrained = run(fast_config("stage=sft", "train=zero_shot", *LEARNABLE, cache=cache),
                    tmp_path / "zero_shot")
    n = trained["eval"]["sft"]["test"]["n"]
    assert n == untrained["eval"]["zero_shot"]["test"]["n"] == 121  # every test sample
    rows = {label: [json.loads(line) for line in
                    (tmp_path / label / f"predictions_{label}_test.jsonl").read_text()
                    .splitlines()] for label in ("sft", "zero_shot")}
    assert [r["index"] for r in rows["sft"]] == [r["index"] for r in rows["zero_shot"]]
    hits = {label: stats.sample_metrics([r["target_rank"] for r in rows[label]])
            for label in rows}
    lift = stats.paired_differences(hits["sft"], hits["zero_shot"], np.arange(n))["hr@1"]
    # Chance is 1/21 = 0.048. Measured with this seed (AVX2 host, float32): SFT − zero-shot
    # HR@1 +0.388 [+0.289, +0.488]. The bar is the interval's lower end above +0.10, so the
    # lift must be at least ~0.2 (the old bar was a point estimate 0.07 above zero-shot).
    assert lift.low > 0.10, lift
    assert trained["eval"]["sft"]["test"]["hr@1"] == pytest.approx(hits["sft"]["hr@1"].mean())


def test_zero_shot_needs_no_training(fast_config, tmp_path):
    metrics = run(fast_config("stage=sft", "train=zero_shot"), tmp_path / "out")
    assert metrics["sft"] == {"enabled": False}
    assert set(metrics["eval"]) == {"zero_shot"}


def test_evaluation_is_reused_across_jobs(fast_config, tmp_path, caplog):
    cache = tmp_path / "cache"
    first = run(fast_config("stage=sft", "train=zero_shot", cache=cache), tmp_path / "a")
    caplog.clear()
    with caplog.at_level("INFO", logger="eapo_exp"):
        second = run(fast_config("stage=sft", "train=zero_shot", cache=cache), tmp_path / "b")
    assert "reusing cached evaluations" in caplog.text
    assert "evaluating zero_shot" not in caplog.text
    assert second["eval"] == first["eval"]
    assert ((tmp_path / "b" / "predictions_zero_shot_test.jsonl").read_text()
            == (tmp_path / "a" / "predictions_zero_shot_test.jsonl").read_text())
    caplog.clear()
    with caplog.at_level("INFO", logger="eapo_exp"):
        third = run(fast_config("stage=sft", "train=zero_shot", "eval.reuse_cached=false",
                                cache=cache), tmp_path / "c")
    assert "evaluating zero_shot" in caplog.text
    assert third["eval"]["zero_shot"]["test"]["hr@1"] == first["eval"]["zero_shot"]["test"]["hr@1"]


def test_eapo_job_end_to_end(fast_config, tmp_path):
    out = tmp_path / "out"
    cfg = fast_config("stage=preference", "beta_schedule=expert", "beta_schedule.u_beta=0.6",
                      "train.preference.max_train_samples=32", "train.preference.max_steps=4",
                      "train.preference.grad_accum=2", "train.preference.analysis_samples=8")
    metrics = run(cfg, out)
    assert metrics["method"] == "EAPO"
    assert {"hr@1", "hr@5", "ndcg@5"} <= set(metrics["eval"]["eapo"]["test"])
    betas = np.load(out / "train_betas.npy")
    lower = critical_z() / cfg.beta_schedule.gamma
    assert betas.size == 4 * 2 * 2 * 3  # steps x accum x batch x K
    assert betas.min() >= lower - 1e-6 and betas.max() <= 0.6 + 1e-6
    assert np.load(out / "reward_discrepancy.npy").size == 8 * 3
    analysis = metrics["analysis"]["eapo"]
    assert 0.0 <= analysis["interference_rate"] <= 1.0
    assert analysis["reward_discrepancy"]["pairs"] == 24
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    pref = [h for h in history if h["phase"] == "preference"]
    assert pref and {"rewards/margins", "rewards/accuracies", "beta/mean"} <= set(pref[-1])
    # Every stage's wall time; no compile time where nothing was compiled.
    timings = metrics["timings"]
    assert set(timings) == {"data_s", "expert_s", "sft_s", "preference_s", "eval_eapo_s"}
    assert all(seconds >= 0 for seconds in timings.values()) and timings["preference_s"] > 0

    # A second job with the same config reuses the trained model and still gets its curve.
    again = tmp_path / "again"
    assert run(cfg, again)["eval"]["eapo"] == metrics["eval"]["eapo"]
    replayed = [json.loads(x) for x in (again / "history.jsonl").read_text().splitlines()]
    strip = ("time",)
    assert ([{k: v for k, v in h.items() if k not in strip} for h in replayed
             if h["phase"] == "preference"]
            == [{k: v for k, v in h.items() if k not in strip} for h in pref])


def test_bad_preference_config_rejected_before_training(fast_config, tmp_path):
    from eapo_exp.errors import ConfigError
    from eapo_exp.validation import validate_config

    bad = {
        "train.preference.num_rejected=25": "num_rejected",
        "beta_schedule=expert beta_schedule.u_beta=0.05": "u_beta",
        "beta_schedule=fixed beta_schedule.beta=0": "beta",
    }
    for overrides, needle in bad.items():
        cfg = fast_config("stage=preference", *overrides.split())
        with pytest.raises(ConfigError, match=needle):
            validate_config(cfg)


def test_missing_expert_rejected(fast_config, tmp_path):
    from eapo_exp.errors import ConfigError

    cfg = fast_config("stage=preference", "beta_schedule=expert", "expert.train_if_missing=false")
    with pytest.raises(ConfigError, match="train_if_missing"):
        run(cfg, tmp_path / "out")
