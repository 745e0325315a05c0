"""The joblib launcher and the Optuna sweeper run real (tiny) sweeps."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml

from eapo_exp.run_dirs import MAX_DIRNAME, short_dirname
from tests.conftest import FAST

REPO = Path(__file__).resolve().parents[1]
PREFERENCE = ["train.preference.max_train_samples=32", "train.preference.max_steps=4",
              "train.preference.grad_accum=2", "train.preference.analysis_samples=8",
              "torch_threads=1"]


def multirun(*args):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "eapo_exp", "-m", *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def job_metrics(sweep: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]


def test_parallel_jobs_share_every_artifact(tmp_path):
    cache, sweep = tmp_path / "cache", tmp_path / "sweep"
    multirun(*FAST, *PREFERENCE, "method=dpo,eapo", "hydra/launcher=local_parallel",
             f"paths.cache_dir={cache}", f"hydra.sweep.dir={sweep}")
    metrics = job_metrics(sweep)
    assert [m["status"] for m in metrics] == ["ok", "ok"]
    assert {m["method"] for m in metrics} == {"DPO", "EAPO"}
    # Two workers at once: distinct processes whose runs overlap in time.
    first, second = (m["runtime"] for m in metrics)
    assert first["pid"] != second["pid"]
    assert max(first["started_at"], second["started_at"]) < min(first["finished_at"],
                                                                 second["finished_at"])
    artifacts = cache / "artifacts"
    for kind in ("samples", "experts", "sft", "reference_logps"):
        built = [p for p in (artifacts / kind).iterdir() if not p.name.startswith(".")]
        assert len(built) == 1, (kind, built)
        assert (built[0] / ".complete").exists()
    assert len(list((artifacts / "preference").glob("[0-9a-f]*"))) == 2


def test_submitit_local_runs_a_sweep_with_its_report(tmp_path):
    """hydra/launcher=slurm's machinery (submitit) without a scheduler. No hydra.sweep.dir:
    the claimed `${now:}` sweep directory must be the one every job writes into."""
    output_root = tmp_path / "out"
    multirun(*FAST, *PREFERENCE, "method=sft,dpo", "hydra/launcher=submitit_local",
             f"paths.cache_dir={tmp_path}/cache", f"paths.output_root={output_root}")
    (sweep,) = (output_root / "multirun").iterdir()
    metrics = job_metrics(sweep)
    assert [(m["status"], m["method"]) for m in metrics] == [("ok", "SFT"), ("ok", "DPO")]
    # submitit's local executor starts every job of the array at once.
    first, second = (m["runtime"] for m in metrics)
    assert first["pid"] != second["pid"]
    assert max(first["started_at"], second["started_at"]) < min(first["finished_at"],
                                                                 second["finished_at"])
    with (sweep / "report" / "summary.csv").open() as handle:
        rows = {(row["split"], row["method"]): row for row in csv.DictReader(handle)}
    dpo = next(m for m in metrics if m["method"] == "DPO")
    for split in ("valid", "test"):
        assert float(rows[split, "DPO"]["hr@1_mean"]) == dpo["eval"]["dpo"][split]["hr@1"]
        assert (split, "SFT") in rows


def test_optuna_searches_u_beta_on_validation_hr1(tmp_path):
    sweep = tmp_path / "sweep"
    multirun(*FAST, *PREFERENCE, "method=eapo", "hydra/sweeper=optuna_u_beta",
             "hydra.sweeper.n_trials=2", f"paths.cache_dir={tmp_path}/cache",
             f"hydra.sweep.dir={sweep}")
    metrics = job_metrics(sweep)
    assert len(metrics) == 2 and all(m["status"] == "ok" for m in metrics)
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == max(m["eval"]["eapo"]["valid"]["hr@1"] for m in metrics)
    u_beta = result["best_params"]["beta_schedule.u_beta"]
    assert 0.4 <= u_beta <= 1.5
    # Optuna's long float overrides still give valid (shortened) job directory names.
    assert all(len(p.name) <= MAX_DIRNAME + 4 for p in sweep.iterdir())


def run_study(tmp_path, *overrides):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "eapo_exp", "-m", *FAST, *PREFERENCE, "method=eapo",
         "hydra/sweeper=optuna_u_beta", "hydra.sweeper.n_trials=2",
         f"paths.cache_dir={tmp_path}/cache", f"hydra.sweep.dir={tmp_path}/sweep", *overrides],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)


def test_optuna_study_whose_every_trial_fails_ends_in_lines_not_a_traceback(tmp_path):
    # U_beta below z_c/gamma (>= 1.278/20): every trial's job fails its config check.
    result = run_study(tmp_path, "hydra.sweeper.params={beta_schedule.u_beta:'interval(0.01,0.02)'}")
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "float-castable" not in output
    failed = [line for line in output.splitlines() if "job failed: ConfigError" in line]
    assert len(failed) == 2  # one line per trial
    assert output.count("no trial of the Optuna study completed") == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        "eapo-exp: error: 2 of 2 sweep jobs failed")
    assert not (tmp_path / "sweep" / "optimization_results.yaml").exists()
    assert len(list((tmp_path / "sweep").glob("*/error.txt"))) == 2


def test_optuna_without_a_validation_split_stops_before_the_first_trial(tmp_path):
    result = run_study(tmp_path, "eval.splits=[test]")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "eapo-exp: error: the Optuna sweeper maximises validation HR@1, but "
        "eval.splits=['test'] has no 'valid'; add it (e.g. eval.splits=[valid,test])")
    assert not list((tmp_path / "sweep").glob("*/metrics.json"))


def test_failed_trial_echoes_are_dropped_only_for_jobs_that_returned_nothing():
    from hydra_plugins.eapo_exp_sweepers.optuna_sweeper import DropFailedJobEchoes

    def kept(message: str) -> bool:
        record = logging.LogRecord("x", logging.WARNING, __file__, 1, message, None, None)
        return DropFailedJobEchoes().filter(record)

    none = 'ValueError("Return value must be float-castable. Got \'None\'.")'
    assert not kept("Failed experiment: Return value must be float-castable. Got 'None'.")
    assert not kept(f"Failed [{none}] times out of 1 with max_failure_rate=0.25.")
    assert not kept(f"Failed [{none}, {none}] times out of 2 with max_failure_rate=0.25.")
    assert kept(f"Failed [{none}, ValueError('nan')] times out of 2 with max_failure_rate=0.25.")
    assert kept("Failed experiment: The value nan is not acceptable.")
    assert kept("Best value: 0.25")


def test_short_dirname_keeps_short_names_and_hashes_long_ones():
    assert short_dirname("method=dpo,seed=0") == "method=dpo,seed=0"
    long_a, long_b = "x=" + "a" * 300, "x=" + "a" * 299 + "b"
    assert len(short_dirname(long_a)) == MAX_DIRNAME
    assert short_dirname(long_a) != short_dirname(long_b)
    assert short_dirname(long_a) == short_dirname(long_a)
