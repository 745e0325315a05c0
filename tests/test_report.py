"""Sweep report: aggregation, summary numbers, plots and the eapo-report CLI on a fabricated
Hydra multirun directory (no training; runs in a few seconds)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from eapo_exp.report.cli import main
from eapo_exp.report.figures import group_label
from eapo_exp.report.jobs import collect_jobs
from eapo_exp.report.markdown import summary_markdown
from eapo_exp.report.plots import axis_lines, is_classic, make_plots
from eapo_exp.report.summary import format_value, summarize
from eapo_exp.report.sweep import build_report
from eapo_exp.report.tables import format_metric_table

# hr@1 on test per (method, u_beta, seed). DPO mean 0.405; EAPO(U_β=0.75) mean 0.465:
# (0.465 - 0.405) / 0.405 = +14.81 % (summary.csv's hr@1_gain; no longer printed).
DPO_HR1 = {0: 0.40, 1: 0.41}
EAPO_HR1 = {0.5: {0: 0.43, 1: 0.45}, 0.75: {0: 0.46, 1: 0.47}}
SFT_HR1 = {0: 0.30, 1: 0.32}
SASREC_HR1 = {0: 0.35, 1: 0.37}


def split_metrics(hr1: float, n: int = 100) -> dict:
    return {"hr@1": hr1, "hr@5": hr1 + 0.3, "ndcg@5": hr1 + 0.15, "n": n}


def config(loss: str, schedule: str, seed: int, u_beta: float | None) -> dict:
    beta = {"name": schedule, "beta": 0.1} if schedule != "expert" else \
        {"name": "expert", "u_beta": u_beta, "gamma": 1.0}
    return {"stage": "all", "seed": seed, "dataset": {"name": "ml100k"},
            "expert": {"name": "sasrec", "data_fraction": 1.0},
            "backbone": {"name": "tiny"}, "loss": {"name": loss}, "beta_schedule": beta,
            "logger": {"name": "none", "project": "eapo-exp"}}


def write_job(root: Path, num: int, overrides: list[str], cfg: dict | None,
              metrics: dict | None, history: list[dict] | None = None,
              betas: np.ndarray | None = None, discrepancy: np.ndarray | None = None) -> Path:
    name = f"{num}_" + ",".join(o for o in overrides if "/" not in o)
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if cfg is not None:
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
        (job / "config_resolved.yaml").write_text(yaml.safe_dump(cfg))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if history is not None:
        (job / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    if betas is not None:
        np.save(job / "betas.npy", betas)
    if discrepancy is not None:
        np.save(job / "reward_discrepancy.npy", discrepancy)
    return job


def history(slope: float, steps: int = 6) -> list[dict]:
    sft = [{"phase": "sft", "step": s, "loss": 2.0 - 0.1 * s} for s in range(3)]
    pref = [{"phase": "preference", "step": s, "loss": 0.69 - 0.05 * s,
             "rewards/margins": slope * s, "rewards/chosen": 0.1 * s,
             "rewards/accuracies": 0.5 + 0.05 * s, "beta/mean": 0.5} for s in range(steps)]
    return sft + pref


def preference_metrics(label: str, method: str | None, hr1: float, seed: int) -> dict:
    metrics = {
        "status": "ok", "stage": "all",
        "eval": {label: {"test": split_metrics(hr1), "valid": split_metrics(hr1 - 0.05)},
                 "sft": {"test": split_metrics(SFT_HR1[seed])}},
        # The layout eapo_exp.evaluation.analysis writes (flat attribution keys).
        "analysis": {label: {"k": 3, "samples": 40, "errors_at_1": 30,
                             "share_high_preference": 0.6, "interference_rate": 0.2,
                             "reward_discrepancy": {"mean": 0.5, "std": 0.1,
                                                    "values": [0.1, 0.4, 0.9]}}},
        "expert": {"name": "sasrec", "artifact": "/tmp/x", "training": {"epochs": 3},
                   "test": split_metrics(SASREC_HR1[seed]),
                   "valid": split_metrics(SASREC_HR1[seed])},
        "popularity": {"test": split_metrics(0.1), "valid": split_metrics(0.1)},
    }
    if method:
        metrics["method"] = method
    return metrics


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun" / "2026-01-01_00-00-00"
    rng = np.random.default_rng(0)
    num = 0
    for seed, hr1 in DPO_HR1.items():
        write_job(root, num, ["loss=dpo", "beta_schedule=fixed", f"seed={seed}"],
                  config("dpo", "fixed", seed, None),
                  preference_metrics("dpo", None, hr1, seed), history(0.5),
                  discrepancy=rng.normal(0.3, 0.5, 200))
        num += 1
    for u_beta, per_seed in EAPO_HR1.items():
        for seed, hr1 in per_seed.items():
            write_job(root, num, ["loss=dpo", "beta_schedule=expert",
                                  f"beta_schedule.u_beta={u_beta}", f"seed={seed}"],
                      config("dpo", "expert", seed, u_beta),
                      preference_metrics("eapo", "EAPO", hr1, seed), history(1.0),
                      betas=rng.uniform(0.78, u_beta + 0.5, 200),
                      discrepancy=rng.normal(0.8, 0.5, 200))
            num += 1
    write_job(root, num, ["loss=dpo", "beta_schedule=expert", "beta_schedule.u_beta=1.0",
                          "seed=0"], config("dpo", "expert", 0, 1.0),
              {"status": "failed", "error": "RuntimeError: CUDA out of memory\ntraceback..."})
    num += 1
    write_job(root, num, ["loss=dpo", "beta_schedule=expert", "beta_schedule.u_beta=1.0",
                          "seed=1"], config("dpo", "expert", 1, 1.0), None)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_format_value():
    assert format_value(0.5558, None, 14.8148) == "0.5558 (+14.81%)"
    assert format_value(0.5, 0.01, -2.0) == "0.5000 ± 0.0100 (-2.00%)"


def test_collect_jobs(sweep: Path):
    df, problems = collect_jobs(sweep)
    assert {"job", "method", "label", "seed", "split", "hr@1", "hr@5", "ndcg@5", "n",
            "loss", "beta_schedule", "beta_schedule.u_beta"} <= set(df.columns)
    assert set(df["method"]) == {"DPO", "EAPO", "SFT", "SASRec", "Popularity"}
    # 6 ok jobs × (main label test+valid, sft test, expert test+valid, popularity test+valid)
    assert len(df) == 6 * 7
    dpo = df[(df["method"] == "DPO") & (df["split"] == "test")].sort_values("seed")
    assert dpo["hr@1"].tolist() == [0.40, 0.41]
    assert dpo["seed"].tolist() == [0, 1]
    eapo = df[(df["method"] == "EAPO") & (df["split"] == "test")]
    assert sorted(eapo["beta_schedule.u_beta"].unique()) == [0.5, 0.75]
    assert dpo["beta_schedule.u_beta"].isna().all()
    reasons = {Path(p["job"]).name.split("_")[0]: p["reason"] for p in problems}
    assert set(reasons) == {"6", "7"}
    assert reasons["6"] == "status failed: RuntimeError: CUDA out of memory"
    assert "missing metrics.json" in reasons["7"]


def test_summarize_numbers(sweep: Path):
    df, _ = collect_jobs(sweep)
    summary = summarize(df, "test")
    assert "beta_schedule.u_beta" in summary.columns  # the swept axis splits EAPO rows
    assert summary["method"].tolist() == ["Popularity", "SASRec", "SFT", "DPO", "EAPO", "EAPO"]
    by = {(r["method"], None if pd.isna(r["beta_schedule.u_beta"]) else r["beta_schedule.u_beta"]): r
          for _, r in summary.iterrows()}
    dpo = by[("DPO", None)]
    assert dpo["seeds"] == 2 and dpo["n"] == 100
    assert dpo["hr@1_mean"] == pytest.approx(0.405)
    assert dpo["hr@1_std"] == pytest.approx(math.sqrt(2 * 0.005 ** 2 / 1))
    assert math.isnan(dpo["hr@1_gain"])
    assert dpo["hr@1"] == "0.4050 ± 0.0071"
    eapo = by[("EAPO", 0.75)]
    assert eapo["hr@1_mean"] == pytest.approx(0.465)
    assert eapo["hr@1_gain"] == pytest.approx((0.465 - 0.405) / 0.405 * 100)
    assert eapo["hr@1"] == "0.4650 ± 0.0071"  # relative gains are not printed
    assert eapo["ndcg@5_gain"] == pytest.approx((0.615 - 0.555) / 0.555 * 100)
    assert by[("EAPO", 0.5)]["hr@1_gain"] == pytest.approx((0.44 - 0.405) / 0.405 * 100)
    # SFT and the expert are evaluated in every job; they still count once per seed.
    sft = by[("SFT", None)]
    assert sft["seeds"] == 2 and sft["hr@1_mean"] == pytest.approx(0.31)
    assert sft["hr@1_std"] == pytest.approx(math.sqrt(2 * 0.01 ** 2))
    assert by[("SASRec", None)]["hr@1_mean"] == pytest.approx(0.36)
    valid = summarize(df, "valid")
    assert "SFT" not in set(valid["method"])
    assert valid.loc[valid["method"] == "DPO", "hr@1_mean"].item() == pytest.approx(0.355)
    table = summary_markdown(summary, title="test")
    assert "| EAPO | 0.75 | 0.4650 ± 0.0071 |" in table


def test_single_seed_has_no_std(tmp_path: Path):
    root = tmp_path / "sweep"
    write_job(root, 0, ["loss=sdpo", "seed=0"], config("sdpo", "fixed", 0, None),
              preference_metrics("sdpo", None, 0.5, 0))
    write_job(root, 1, ["loss=sdpo", "beta_schedule=expert", "seed=0"],
              config("sdpo", "expert", 0, 0.75), preference_metrics("sdpo", None, 0.55, 0))
    df, problems = collect_jobs(root)
    assert problems == []
    summary = summarize(df).set_index("method")
    assert summary.loc["S-DPO", "hr@1"] == "0.5000"
    assert summary.loc["EA-SDPO", "hr@1"] == "0.5500"
    assert summary.loc["EA-SDPO", "hr@1_gain"] == pytest.approx(10.0)
    assert math.isnan(summary.loc["EA-SDPO", "hr@1_std"])


def test_counts_print_without_decimals(tmp_path: Path):
    """Token and reply counts are whole numbers: no ".0000" after them; rates keep 4 digits."""
    root = tmp_path / "sweep"
    for seed, tokens in ((0, 1200), (1, 1301)):
        metrics = preference_metrics("sdpo", None, 0.5, seed)
        metrics["eval"]["sdpo"]["test"].update(valid_ratio=1.0, prompt_tokens=tokens)
        write_job(root, seed, ["loss=sdpo", f"seed={seed}"], config("sdpo", "fixed", seed, None),
                  metrics)
    df, _ = collect_jobs(root)
    row = summarize(df).set_index("method").loc["S-DPO"]
    assert row["prompt_tokens"] == "1250.5 ± 71.4"
    assert row["valid_ratio"] == "1.0000 ± 0.0000"
    single = summarize(df[df["seed"] == 0]).set_index("method").loc["S-DPO"]
    assert single["prompt_tokens"] == "1200"


def test_rows_are_read_from_provenance(tmp_path: Path):
    """metrics.json's provenance names each row's method and artifacts: the report reads it
    rather than the label or config, an axis splits only the rows whose artifacts read it,
    and a method the table lacks is listed as a problem."""
    llm = ["samples", "backbone", "sft", "evaluation"]
    provenance = {"custom": {"method": "ea_ipo", "depends_on": [*llm, "preference", "expert"]},
                  "sft": {"method": "sft", "depends_on": llm},
                  "expert": {"method": "expert_only", "depends_on": ["samples", "expert"]},
                  "popularity": {"method": "popularity", "depends_on": ["samples"]}}
    root = tmp_path / "sweep"
    for num, fraction in enumerate((0.5, 1.0)):
        cfg = config("dpo", "fixed", 0, None)
        cfg["expert"]["data_fraction"] = fraction
        metrics = {**preference_metrics("custom", None, 0.4 + 0.1 * num, 0),
                   "provenance": provenance}
        write_job(root, num, [f"expert.data_fraction={fraction}", "seed=0"], cfg, metrics)
    unknown = {**preference_metrics("dpo", None, 0.4, 0),
               "provenance": {**provenance, "dpo": {"method": "kto", "depends_on": llm}}}
    write_job(root, 2, ["seed=0"], config("dpo", "fixed", 0, None), unknown)
    df, problems = collect_jobs(root)
    assert [p["job"].split("_")[0] for p in problems] == ["2"]
    assert "'kto' is not in eapo_exp.methods.METHODS" in problems[0]["reason"]
    summary = summarize(df)
    fractions = {(r["method"], None if pd.isna(r["expert.data_fraction"])
                  else r["expert.data_fraction"]) for _, r in summary.iterrows()}
    assert fractions == {("Popularity", None), ("SASRec", 0.5), ("SASRec", 1.0), ("SFT", None),
                         ("EA-IPO", 0.5), ("EA-IPO", 1.0)}
    assert set(df.loc[df["label"] == "custom", "kind"]) == {"preference"}


def test_plots(sweep: Path, tmp_path: Path):
    out = tmp_path / "plots"
    files = make_plots(sweep, out, split="test")
    names = {f.name for f in files}
    assert names == {"metric_vs_u_beta_test.png", "reward_margins.png",
                     "reward_discrepancy.png", "expert_betas.png"}
    for path in files:
        assert path.is_file() and 1000 < path.stat().st_size < 200_000


def test_no_plot_without_data(tmp_path: Path):
    root = tmp_path / "sweep"
    metrics = preference_metrics("dpo", None, 0.5, 0)
    del metrics["analysis"]  # no history, no arrays, no analysis values, one axis value
    write_job(root, 0, ["seed=0"], config("dpo", "fixed", 0, None), metrics)
    assert make_plots(root, tmp_path / "out") == []


def test_plots_from_training_arrays(tmp_path: Path):
    """The pipeline's train_betas.npy / train_discrepancy.npy are used as a fallback."""
    root = tmp_path / "sweep"
    metrics = preference_metrics("eapo", "EAPO", 0.5, 0)
    del metrics["analysis"]
    job = write_job(root, 0, ["beta_schedule=expert", "seed=0"],
                    config("dpo", "expert", 0, 0.75), metrics)
    np.save(job / "train_betas.npy", np.linspace(0.78, 0.75, 50))
    np.save(job / "train_discrepancy.npy", np.linspace(-1, 1, 50))
    files = make_plots(root, tmp_path / "out")
    assert {f.name for f in files} == {"reward_discrepancy.png", "expert_betas.png"}


def test_report_files(sweep: Path):
    result = build_report(sweep)
    out = sweep / "report"
    assert {p.name for p in result["files"]} == {"report.csv", "summary.csv", "summary.md",
                                                 "comparisons.csv", "learning.csv"}
    report = pd.read_csv(out / "report.csv")
    assert len(report) == 42
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["split"]) == {"test", "valid"}
    text = (out / "summary.md").read_text()
    assert "%)" not in text  # no relative gains; no predictions here, so no comparisons
    assert "Paired comparisons" not in text
    assert pd.read_csv(out / "comparisons.csv").empty
    assert "Seeds: 0, 1 (2)" in text
    assert "status failed: RuntimeError: CUDA out of memory" in text
    assert "missing metrics.json" in text
    assert text.index("Split: test") < text.index("Split: valid")
    assert "interference_rate" in text  # analysis table
    assert "share_high_preference" in text and "0.6000" in text


def test_cli(sweep: Path, tmp_path: Path, capsys, monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "report"
    # No W&B setting anywhere: the report run is saved offline.
    assert main([str(sweep), "--out", str(out), "--wandb"]) == 0
    printed = capsys.readouterr().out
    assert "| EAPO | 0.75 | 0.4650 ± 0.0071 |" in printed
    assert "W&B: report saved offline; upload with: wandb sync" in printed
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1
    # Online without an API key is refused in one line, the report still written.
    monkeypatch.setenv("WANDB_MODE", "online")
    assert main([str(sweep), "--out", str(out), "--wandb"]) == 0
    assert "W&B: online, but no API key" in capsys.readouterr().out
    for name in ("report.csv", "summary.csv", "summary.md", "reward_margins.png"):
        assert (out / name).stat().st_size > 0


def test_cli_errors(tmp_path: Path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("eapo-report: error:") and "does not exist" in err
    assert len(err.splitlines()) == 1
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no job directories" in capsys.readouterr().err


def test_format_metric_table_unchanged():
    table = format_metric_table({"DPO": {"hr@1": 0.5, "n": 3}}, title="t")
    assert table.splitlines()[0] == "### t"
    assert "| DPO | 0.5000 | - | - | 3 |" in table


def test_axis_lines_keep_swept_lines_and_put_the_expert_on_its_own_axis():
    """Expert-quality plot of a report that also holds a U_β sweep: EAPO at U_β 0.3 has one
    point on the data-fraction axis and is left out; SASRec (no U_β) is labelled without an
    empty U_β and goes to the right-hand axis."""
    rows = [("EAPO", "preference", fraction, "0.75", seed)
            for fraction in (0.5, 1.0) for seed in (1, 2)]
    rows += [("EAPO", "preference", 1.0, "0.3", seed) for seed in (1, 2)]
    rows += [("SASRec", "expert", fraction, "", 0) for fraction in (0.5, 1.0)]
    on_axis = pd.DataFrame(rows, columns=["method", "kind", "expert.data_fraction",
                                          "beta_schedule.u_beta", "seed"])
    lines = axis_lines(on_axis, "expert.data_fraction", ["beta_schedule.u_beta"])
    assert [key for key, _ in lines] == [("SASRec", ""), ("EAPO", "0.75")]
    assert [is_classic(rows) for _, rows in lines] == [True, False]
    labels = [group_label(key[0], {"beta_schedule.u_beta": key[1]}) for key, _ in lines]
    assert labels == ["SASRec", "EAPO (U_β=0.75)"]
    single = on_axis[on_axis["beta_schedule.u_beta"] == "0.3"]
    assert [key for key, _ in axis_lines(single, "expert.data_fraction",
                                         ["beta_schedule.u_beta"])] == [("EAPO", "0.3")]
