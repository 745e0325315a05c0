"""The `smoke` experiment as a real Hydra multirun, then the sweep report over it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_smoke_multirun_and_report(tmp_path):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    result = subprocess.run(
        [sys.executable, "-m", "eapo_exp", "-m", "experiment=smoke", "method=sft,eapo", "seed=0",
         f"paths.cache_dir={tmp_path}/cache", f"hydra.sweep.dir={sweep}"],
        check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if (p / "metrics.json").exists())
    assert len(jobs) == 2
    # Each job names its rows' methods and the artifacts their results depend on.
    rows = {}
    for job in jobs:
        rows.update(json.loads((job / "metrics.json").read_text())["provenance"])
    assert {label: row["method"] for label, row in rows.items()} == {
        "sft": "sft", "expert": "expert_only", "popularity": "popularity", "eapo": "eapo"}
    assert "expert" in rows["eapo"]["depends_on"] and "expert" not in rows["sft"]["depends_on"]
    # The multirun's own end-of-sweep callback already wrote and printed the report.
    assert "| EAPO |" in result.stdout and "| SFT |" in result.stdout
    assert (sweep / "report" / "summary.md").exists()
    assert (sweep / "report" / "reward_margins.png").exists()

    report = subprocess.run([sys.executable, "-m", "eapo_exp.report.cli", str(sweep)], check=False,
                            cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "EAPO" in report.stdout and "SFT" in report.stdout
    written = {p.name for p in (sweep / "report").iterdir()}
    assert {"report.csv", "summary.csv", "summary.md"} <= written
    assert "expert_betas.png" in written and "reward_margins.png" in written
