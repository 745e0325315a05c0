"""Report statistics: per-sample metrics, paired bootstrap CIs, exact McNemar, verdicts, and
whole reports built from fabricated job directories with per-sample predictions (the
layout the pipeline writes: metrics.json + predictions_<label>_<split>.jsonl)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from eapo_exp.evaluation.metrics import metrics_from_ranks
from eapo_exp.report import stats
from eapo_exp.report.cli import main
from eapo_exp.report.comparisons import sweep_statistics
from eapo_exp.report.jobs import rows_from_jobs, scan_jobs
from eapo_exp.report.plots import interval_lookup, plot_metric_vs_axis
from eapo_exp.report.sweep import build_report
from tests.test_report import config, write_job

N_SAMPLES = 400
CANDIDATES = 21


def ranks_with_hr1(rate: float, rng: np.random.Generator, n: int = N_SAMPLES) -> np.ndarray:
    """Target ranks with exactly round(rate · n) hits at random samples; misses rank 2..21.

    The true HR@1 on these samples is then `rate`, so a true difference is known exactly.
    """
    hits = rng.permutation(n) < round(rate * n)
    return np.where(hits, 1, rng.integers(2, CANDIDATES + 1, size=n))


def prediction_rows(ranks: np.ndarray) -> list[dict]:
    """Rows like eapo_exp.evaluation.ranking writes (fields the report does not read too)."""
    return [{"index": i, "user": f"u{i % 97}", "target": 1000 + i, "target_title": f"t{i}",
             "template": "chronological", "dropped_history": 0, "ranked_items": [],
             "target_rank": int(rank)} for i, rank in enumerate(ranks)]


def write_predictions_job(root: Path, num: int, method: str, seed: int,
                          ranks: dict[str, np.ndarray], u_beta: float | None = None,
                          experiment: str | None = None) -> Path:
    """A stage=all job of `method` (dpo/eapo/beta_dpo) evaluating SFT and the method on test.

    ranks: {eval label: target ranks}; metrics.json holds the means of the same ranks.
    """
    loss, schedule = {"dpo": ("dpo", "fixed"), "eapo": ("dpo", "expert"),
                      "beta_dpo": ("dpo", "beta_dpo")}[method]
    overrides = [f"method={method}", f"seed={seed}"]
    if experiment is not None:
        overrides.insert(0, f"experiment={experiment}")
    if u_beta is not None:
        overrides.insert(1, f"beta_schedule.u_beta={u_beta}")
    evals = {label: {"test": {**metrics_from_ranks(r), "mode": "score"}}
             for label, r in ranks.items()}
    job = write_job(root, num, overrides, config(loss, schedule, seed, u_beta),
                    {"status": "ok", "stage": "all", "eval": evals})
    for label, r in ranks.items():
        lines = "".join(json.dumps(row) + "\n" for row in prediction_rows(r))
        (job / f"predictions_{label}_test.jsonl").write_text(lines)
    return job


def comparison(table: pd.DataFrame, method: str, reference: str, metric: str = "hr@1",
               **axes) -> pd.Series:
    rows = table[(table["method"] == method) & (table["reference"] == reference)
                 & (table["metric"] == metric)]
    for axis, value in axes.items():
        rows = rows[rows[axis] == value]
    assert len(rows) == 1, rows
    return rows.iloc[0]


@pytest.fixture()
def two_methods(tmp_path: Path) -> Path:
    """DPO (true HR@1 0.30) and EAPO (0.60) on the same 400 test samples, seed 0; SFT (0.30)
    is evaluated in both jobs from the same model, so its predictions are identical."""
    rng = np.random.default_rng(7)
    sft, dpo, eapo = (ranks_with_hr1(rate, rng) for rate in (0.30, 0.30, 0.60))
    root = tmp_path / "sweep"
    write_predictions_job(root, 0, "dpo", 0, {"sft": sft, "dpo": dpo})
    write_predictions_job(root, 1, "eapo", 0, {"sft": sft, "eapo": eapo})
    return root


def test_sample_metrics_match_the_evaluation_metrics():
    ranks = np.random.default_rng(0).integers(0, CANDIDATES + 1, size=500)  # 0 = not listed
    vectors = stats.sample_metrics(ranks)
    expected = metrics_from_ranks(ranks)
    for metric in stats.METRICS:
        assert vectors[metric].mean() == pytest.approx(expected[metric])
    assert stats.sample_metrics([1, 3, 6, 0])["ndcg@5"].tolist() == [1.0, 0.5, 0.0, 0.0]


def test_mcnemar_exact_hand_computed():
    # b=1, c=6: P(X <= 1) = (C(7,0) + C(7,1)) / 2^7 = 8/128; two-sided 0.125.
    assert stats.mcnemar_exact(1, 6) == pytest.approx(0.125)
    assert stats.mcnemar_exact(6, 1) == pytest.approx(0.125)
    # b=2, c=10: (1 + 12 + 66) / 4096, doubled = 158/4096.
    assert stats.mcnemar_exact(2, 10) == pytest.approx(158 / 4096)
    assert stats.mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert stats.mcnemar_exact(3, 3) == 1.0 and stats.mcnemar_exact(0, 0) == 1.0
    # Large counts stay exact and finite: 5000 vs 5200 discordant pairs.
    p = stats.mcnemar_exact(5000, 5200)
    assert 0.04 < p < 0.06  # normal approximation: z = 200 / sqrt(10200) = 1.98 -> 0.048
    assert stats.discordant_pairs([1, 1, 0, 0, 1], [0, 1, 1, 0, 0]) == (2, 1)


def test_bootstrap_is_deterministic_for_a_fixed_seed():
    rng = np.random.default_rng(1)
    values = rng.random((300, 2))
    clusters = np.arange(300)
    first = stats.bootstrap_means(values, clusters, n_resamples=500, seed=3)
    again = stats.bootstrap_means(values, clusters, n_resamples=500, seed=3)
    other = stats.bootstrap_means(values, clusters, n_resamples=500, seed=4)
    assert first.shape == (500, 2)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_seeds_on_the_same_samples_do_not_narrow_the_interval():
    """Cluster bootstrap: a second seed with the same per-sample scores adds no samples."""
    scores = {"hr@1": (np.random.default_rng(2).random(200) < 0.4).astype(float)}
    one = stats.mean_intervals(scores, np.arange(200), n_resamples=2000)["hr@1"]
    doubled = {"hr@1": np.concatenate([scores["hr@1"], scores["hr@1"]])}
    two = stats.mean_intervals(doubled, np.tile(np.arange(200), 2), n_resamples=2000)["hr@1"]
    assert (two.low, two.high) == pytest.approx((one.low, one.high))


def test_paired_interval_covers_the_true_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(11)
    covered = 0
    trials = 200
    for trial in range(trials):
        a = (rng.random(N_SAMPLES) < 0.6).astype(float)
        b = (rng.random(N_SAMPLES) < 0.3).astype(float)
        est = stats.paired_differences({"hr@1": a}, {"hr@1": b}, np.arange(N_SAMPLES),
                                       n_resamples=1000, seed=trial)["hr@1"]
        covered += est.low <= 0.30 <= est.high
    assert 0.89 <= covered / trials <= 0.99


def test_verdicts():
    assert stats.verdict(stats.Estimate(0.3, 0.2, 0.4)) == "better"
    assert stats.verdict(stats.Estimate(-0.3, -0.4, -0.2)) == "worse"
    assert stats.verdict(stats.Estimate(0.0, 0.0, 0.0)) == "within noise"
    assert stats.verdict(stats.Estimate(0.05, 0.0, 0.1)) == "within noise"  # touches 0
    # HR@1 also needs the exact test: a CI just off 0 with McNemar p 0.06 is noise.
    assert stats.verdict(stats.Estimate(0.11, 0.01, 0.21), p_value=0.061) == "within noise"
    assert stats.verdict(stats.Estimate(0.11, 0.01, 0.21), p_value=0.04) == "better"


def test_report_finds_a_known_difference(two_methods: Path):
    result = build_report(two_methods)
    table = result["stats"].comparisons
    row = comparison(table, "EAPO", "DPO")
    assert row["verdict"] == "better"
    assert row["ci_low"] <= 0.30 <= row["ci_high"]  # the true difference
    assert 0.0 < row["ci_low"] < row["difference"] < row["ci_high"]
    assert (row["n"], row["seeds"]) == (N_SAMPLES, 1)
    assert row["mcnemar_p"] < 1e-6
    assert comparison(table, "EAPO", "SFT")["verdict"] == "better"
    assert comparison(table, "EAPO", "DPO", "ndcg@5")["verdict"] == "better"
    # DPO and SFT share the true rate: their interval must contain 0.
    dpo = comparison(table, "DPO", "SFT")
    assert dpo["verdict"] == "within noise" and dpo["ci_low"] < 0.0 < dpo["ci_high"]
    # The summary carries each method's CI, and the markdown shows both tables.
    summary = result["summary"]
    eapo = summary[(summary["split"] == "test") & (summary["method"] == "EAPO")].iloc[0]
    assert eapo["hr@1_ci_low"] < eapo["hr@1_mean"] < eapo["hr@1_ci_high"]
    assert eapo["hr@1"] == (f"{eapo['hr@1_mean']:.4f} [{eapo['hr@1_ci_low']:.4f}, "
                            f"{eapo['hr@1_ci_high']:.4f}]")
    text = (two_methods / "report" / "summary.md").read_text()
    assert "### Paired comparisons: test" in text
    line = next(x for x in text.splitlines() if x.startswith("| EAPO | DPO | hr@1 |"))
    assert line.endswith(f"| better | {N_SAMPLES} | 1 |")
    saved = pd.read_csv(two_methods / "report" / "comparisons.csv")
    assert len(saved) == len(table) == 3 * 3  # (DPO-SFT, EAPO-DPO, EAPO-SFT) × 3 metrics


def test_identical_methods_are_within_noise(tmp_path: Path):
    rng = np.random.default_rng(3)
    sft, dpo = ranks_with_hr1(0.3, rng), ranks_with_hr1(0.4, rng)
    root = tmp_path / "sweep"
    write_predictions_job(root, 0, "dpo", 0, {"sft": sft, "dpo": dpo})
    write_predictions_job(root, 1, "beta_dpo", 0, {"sft": sft, "beta_dpo": dpo})
    table = build_report(root)["stats"].comparisons
    for metric in stats.METRICS:
        row = comparison(table, "β-DPO", "DPO", metric)
        assert row["verdict"] == "within noise"
        assert (row["difference"], row["ci_low"], row["ci_high"]) == (0.0, 0.0, 0.0)
    assert comparison(table, "β-DPO", "DPO")["mcnemar_p"] == 1.0


def write_u_beta_sweep(root: Path, seeds: int, rng: np.random.Generator) -> Path:
    """Per seed: DPO (true HR@1 0.3) and EAPO at U_β 0.5 (0.3) and 0.75 (0.6), with SFT
    (0.2) evaluated from one model in every job of the seed."""
    num = 0
    for seed in range(seeds):
        sft = ranks_with_hr1(0.2, rng)
        write_predictions_job(root, num, "dpo", seed,
                              {"sft": sft, "dpo": ranks_with_hr1(0.3, rng)})
        num += 1
        for u_beta, rate in ((0.5, 0.3), (0.75, 0.6)):
            write_predictions_job(root, num, "eapo", seed,
                                  {"sft": sft, "eapo": ranks_with_hr1(rate, rng)}, u_beta)
            num += 1
    return root


def test_seeds_are_pooled_and_axes_matched(tmp_path: Path):
    """Three seeds of DPO and of EAPO at two U_β values: DPO (no U_β) is the base of both,
    pairs are made seed by seed, and n counts distinct test samples."""
    root = write_u_beta_sweep(tmp_path / "sweep", seeds=3, rng=np.random.default_rng(5))
    jobs = scan_jobs(root)
    df, _ = rows_from_jobs(jobs)
    result = sweep_statistics(jobs, df, n_resamples=1000)
    assert result.axes == ["beta_schedule.u_beta"]
    table = result.comparisons
    strong = comparison(table, "EAPO", "DPO", **{"beta_schedule.u_beta": 0.75})
    same = comparison(table, "EAPO", "DPO", **{"beta_schedule.u_beta": 0.5})
    assert (strong["n"], strong["seeds"]) == (N_SAMPLES, 3)
    assert strong["verdict"] == "better" and strong["ci_low"] <= 0.30 <= strong["ci_high"]
    assert same["ci_low"] < 0.0 < same["ci_high"]
    # The pooled difference is the mean over (seed, sample) pairs.
    summary = df[(df["split"] == "test") & (df["kind"] == "preference")]
    eapo = summary[summary["beta_schedule.u_beta"] == 0.75]["hr@1"].mean()
    dpo = summary[summary["method"] == "DPO"]["hr@1"].mean()
    assert strong["difference"] == pytest.approx(eapo - dpo)
    intervals = result.intervals
    sft = intervals[(intervals["method"] == "SFT") & (intervals["metric"] == "hr@1")]
    assert len(sft) == 1 and sft.iloc[0]["seeds"] == 3  # SFT counted once per seed
    plot = plot_metric_vs_axis(df, "beta_schedule.u_beta", tmp_path / "u_beta.png", "test",
                               intervals)
    assert plot is not None and plot.stat().st_size > 1000
    lookup = interval_lookup(intervals, "test", "beta_schedule.u_beta", [])
    assert ("DPO", None, "hr@1") in lookup and ("EAPO", 0.75, "hr@1") in lookup


def test_cli_prints_verdicts_and_plots_intervals(two_methods: Path, tmp_path: Path, capsys,
                                                 monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    out = tmp_path / "out"
    assert main([str(two_methods), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = {tuple(cells[:3]): cells for line in printed.splitlines()
            if (cells := [c.strip() for c in line.strip().strip("|").split("|")])
            and len(cells) == 9}
    # EAPO's true HR@1 is 0.60 against DPO's 0.30 on the same samples; DPO equals SFT.
    eapo = rows[("EAPO", "DPO", "hr@1")]
    assert eapo[3] == "+0.3000" and eapo[6] == "better", eapo
    assert eapo[7:] == ["400", "1"], eapo
    low, high = (float(x) for x in eapo[4].strip("[]").split(","))
    assert 0.2 < low < 0.3 < high < 0.4
    assert rows[("DPO", "SFT", "hr@1")][6] == "within noise"
    assert (out / "paired_differences_test.png").stat().st_size > 1000


def test_no_predictions_no_statistics(tmp_path: Path):
    root = tmp_path / "sweep"
    job = write_predictions_job(root, 0, "dpo", 0, {"sft": np.ones(10, dtype=int)})
    (job / "predictions_sft_test.jsonl").unlink()
    result = build_report(root)
    assert result["stats"].comparisons.empty and result["stats"].intervals.empty
    assert result["summary"].loc[0, "hr@1"] == "1.0000"
    assert not math.isnan(result["summary"].loc[0, "hr@1_mean"])


def test_a_method_whose_base_is_sft_is_compared_with_it_once():
    from eapo_exp.report.comparisons import _references

    assert _references("LLaRA") == ["SFT"]
    assert _references("EAPO") == ["DPO", "SFT"]
    assert _references("SFT") == []


def test_preference_runs_on_hybrid_items_are_compared_with_their_llara_sft(tmp_path: Path):
    """With prompt.item_repr=hybrid the SFT model is labelled LLaRA; with no SFT row in the
    sweep, it is the SFT-stage reference of DPO and EAPO (and never of itself)."""
    rng = np.random.default_rng(11)
    llara, dpo, eapo = (ranks_with_hr1(rate, rng) for rate in (0.1, 0.1, 0.5))
    root = tmp_path / "sweep"
    write_predictions_job(root, 0, "dpo", 0, {"llara": llara, "dpo": dpo})
    write_predictions_job(root, 1, "eapo", 0, {"llara": llara, "eapo": eapo})
    table = build_report(root)["stats"].comparisons
    assert comparison(table, "EAPO", "LLaRA")["verdict"] == "better"
    assert comparison(table, "EAPO", "DPO")["verdict"] == "better"
    assert comparison(table, "DPO", "LLaRA")["ci_low"] < 0.0
    assert set(table["reference"]) == {"DPO", "LLaRA"}
    assert not (table["method"] == "LLaRA").any()


def test_extra_pairs_compare_any_two_methods_of_a_sweep(tmp_path: Path, capsys):
    """--pair adds a comparison beyond base and SFT (here EAPO against β-DPO, whose true
    HR@1 differ by 0.30), listed between the base and SFT; the reverse is not added."""
    rng = np.random.default_rng(5)
    sft, dpo, eapo, beta = (ranks_with_hr1(rate, rng) for rate in (0.3, 0.3, 0.6, 0.3))
    root = tmp_path / "sweep"
    write_predictions_job(root, 0, "dpo", 0, {"sft": sft, "dpo": dpo})
    write_predictions_job(root, 1, "eapo", 0, {"sft": sft, "eapo": eapo})
    write_predictions_job(root, 2, "beta_dpo", 0, {"sft": sft, "beta_dpo": beta})
    table = build_report(root, pairs=[("EAPO", "β-DPO")])["stats"].comparisons
    found = comparison(table, "EAPO", "β-DPO")
    assert found["verdict"] == "better" and found["ci_low"] < 0.3 < found["ci_high"]
    assert not ((table["method"] == "β-DPO") & (table["reference"] == "EAPO")).any()
    eapo_refs = table[(table["method"] == "EAPO") & (table["metric"] == "hr@1")]["reference"]
    assert list(eapo_refs) == ["DPO", "β-DPO", "SFT"]
    plain = build_report(root, out_dir=tmp_path / "plain")["stats"].comparisons
    assert set(plain["reference"]) == {"DPO", "SFT"}

    assert main([str(root), "--no-plots", "--pair", "EAPO:β-DPO"]) == 0
    assert "| EAPO | β-DPO | hr@1 |" in capsys.readouterr().out


@pytest.mark.parametrize("pair", ["EAPO", "EAPO:", ":DPO", "EAPO:EAPO", "A:B:C"])
def test_a_malformed_pair_is_refused_with_its_text(two_methods: Path, capsys, pair: str):
    assert main([str(two_methods), "--no-plots", "--pair", pair]) == 2
    assert repr(pair) in capsys.readouterr().err
    assert not (two_methods / "report").exists()


def test_the_sweep_callback_passes_its_pairs_and_refuses_bad_ones(two_methods: Path):
    from eapo_exp.report.callback import SweepReport

    with pytest.raises(ValueError, match=r"hydra.callbacks.sweep_report.pairs: pair 'DPO'"):
        SweepReport(pairs=["DPO"])
    SweepReport(plots=False, pairs=["DPO:EAPO"]).write_report(two_methods, wandb=False)
    table = pd.read_csv(two_methods / "report" / "comparisons.csv")
    assert comparison(table, "DPO", "EAPO")["verdict"] == "worse"


def test_axis_baselines_compare_each_value_with_the_same_method_at_the_baseline(
        tmp_path: Path, capsys):
    """EAPO at U_β 0.5 (true HR@1 0.3) and 0.75 (0.6), two seeds: --axis-baseline
    beta_schedule.u_beta=0.75 adds EAPO (0.5) − EAPO (0.75), paired seed by seed, and no row
    for the baseline value itself or for DPO, which has no U_β."""
    root = write_u_beta_sweep(tmp_path / "sweep", seeds=2, rng=np.random.default_rng(13))
    table = build_report(root, axis_baselines=[("beta_schedule.u_beta", 0.75)])[
        "stats"].comparisons
    row = comparison(table, "EAPO", "EAPO (U_β 0.75)", **{"beta_schedule.u_beta": 0.5})
    assert row["verdict"] == "worse" and row["ci_low"] <= -0.30 <= row["ci_high"]
    assert (row["n"], row["seeds"]) == (N_SAMPLES, 2)
    assert set(table["reference"]) == {"DPO", "SFT", "EAPO (U_β 0.75)"}
    assert len(table[table["reference"] == "EAPO (U_β 0.75)"]) == len(stats.METRICS)

    assert main([str(root), "--no-plots", "--axis-baseline", "beta_schedule.u_beta=0.75"]) == 0
    assert "| EAPO | 0.5 | EAPO (U_β 0.75) | hr@1 |" in capsys.readouterr().out


@pytest.mark.parametrize("entry", ["expert.data_fraction", "=1.0", "expert.data_fraction="])
def test_a_malformed_axis_baseline_is_refused_with_its_text(two_methods: Path, capsys,
                                                            entry: str):
    from eapo_exp.report.callback import SweepReport

    assert main([str(two_methods), "--no-plots", "--axis-baseline", entry]) == 2
    assert repr(entry) in capsys.readouterr().err
    assert not (two_methods / "report").exists()
    with pytest.raises(ValueError, match="hydra.callbacks.sweep_report.axis_baselines"):
        SweepReport(axis_baselines=[entry])


def test_sweeps_of_related_experiments_share_one_report(tmp_path: Path, caplog):
    """DPO from an experiment=cpu_long sweep (with EAPO at U_β 0.75) is the base of the EAPO
    U_β 0.3 job of an experiment=cpu_long_u_beta sweep: the experiment name is no axis, and
    the report says it joined two experiments."""
    rng = np.random.default_rng(17)
    sft = ranks_with_hr1(0.2, rng)
    root = tmp_path / "both"
    write_predictions_job(root / "main", 0, "dpo", 0,
                          {"sft": sft, "dpo": ranks_with_hr1(0.3, rng)},
                          experiment="cpu_long")
    write_predictions_job(root / "main", 1, "eapo", 0,
                          {"sft": sft, "eapo": ranks_with_hr1(0.3, rng)}, u_beta=0.75,
                          experiment="cpu_long")
    write_predictions_job(root / "u_beta", 0, "eapo", 0,
                          {"sft": sft, "eapo": ranks_with_hr1(0.6, rng)}, u_beta=0.3,
                          experiment="cpu_long_u_beta")
    with caplog.at_level("WARNING"):
        result = build_report(root)
    assert result["stats"].axes == ["beta_schedule.u_beta"]
    row = comparison(result["stats"].comparisons, "EAPO", "DPO",
                     **{"beta_schedule.u_beta": 0.3})
    assert row["verdict"] == "better" and row["ci_low"] <= 0.30 <= row["ci_high"]
    assert "experiments cpu_long, cpu_long_u_beta" in caplog.text


def test_an_expert_quality_sweep_on_hybrid_items_meets_its_dpo_and_llara(tmp_path: Path):
    """cpu_long (LLaRA, DPO, EAPO; hybrid item slots from the expert of the run) beside
    cpu_long_expert_quality (EAPO with a 50%-data β expert, item slots pinned to the full
    expert): DPO and LLaRA read the expert only through the item slots, so they are the
    reference of the 50% EAPO too. Provenance as jobs wrote it before item_expert existed
    ("expert" for the item slots)."""
    rng = np.random.default_rng(19)
    llara = ranks_with_hr1(0.1, rng)
    root = tmp_path / "runs"
    hybrid = {"item_repr": "hybrid"}
    jobs = (("main", 0, "dpo", 1.0, None, 0.1), ("main", 1, "eapo", 1.0, None, 0.1),
            ("eq", 0, "eapo", 0.5, 1.0, 0.5))
    for sweep, num, method, fraction, pinned, rate in jobs:
        job = write_predictions_job(root / sweep, num, method, 0,
                                    {"llara": llara, method: ranks_with_hr1(rate, rng)},
                                    u_beta=0.75 if method == "eapo" else None)
        cfg = yaml.safe_load((job / "config_resolved.yaml").read_text())
        cfg["expert"]["data_fraction"] = fraction
        cfg["prompt"] = {**hybrid, "item_expert_data_fraction": pinned}
        (job / "config_resolved.yaml").write_text(yaml.safe_dump(cfg))
        metrics = json.loads((job / "metrics.json").read_text())
        llm = ["samples", "backbone", "sft", "evaluation", "expert"]
        metrics["provenance"] = {
            "llara": {"method": "llara", "depends_on": llm},
            method: {"method": method, "depends_on": [*llm, "preference"]}}
        (job / "metrics.json").write_text(json.dumps(metrics))
    result = build_report(root, axis_baselines=[("expert.data_fraction", 1.0)])
    assert result["stats"].axes == ["expert.data_fraction"]
    table = result["stats"].comparisons
    half = {"expert.data_fraction": 0.5}
    assert comparison(table, "EAPO", "DPO", **half)["verdict"] == "better"
    assert comparison(table, "EAPO", "LLaRA", **half)["verdict"] == "better"
    assert comparison(table, "EAPO", "EAPO (expert data 1.0)", **half)["verdict"] == "better"
    assert comparison(table, "EAPO", "DPO", **{"expert.data_fraction": 1.0})[
        "verdict"] == "within noise"
    dpo = result["df"][result["df"]["method"] == "DPO"]
    assert dpo["depends_on"].str.contains("item_expert").all()
    assert not dpo["depends_on"].str.split().map(lambda kinds: "expert" in kinds).any()
