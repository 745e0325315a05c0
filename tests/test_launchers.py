"""The joblib launcher and the Optuna sweeper run real (tiny) sweeps."""

from __future__ import annotations

import csv
import json
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


def test_short_dirname_keeps_short_names_and_hashes_long_ones():
    assert short_dirname("method=dpo,seed=0") == "method=dpo,seed=0"
    long_a, long_b = "x=" + "a" * 300, "x=" + "a" * 299 + "b"
    assert len(short_dirname(long_a)) == MAX_DIRNAME
    assert short_dirname(long_a) != short_dirname(long_b)
    assert short_dirname(long_a) == short_dirname(long_a)
