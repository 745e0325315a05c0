"""logger=wandb in offline mode (the default): each job is a W&B run saved for `wandb sync`,
with the training curves, histograms and final metrics, and a failed job still finishes
its run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import FAST

REPO = Path(__file__).resolve().parents[1]


def cli(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return subprocess.run([sys.executable, "-m", "eapo_exp", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def offline_run_file(out: Path) -> bytes:
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, f"expected one offline W&B run under {out}, found {runs}"
    return runs[0].read_bytes()


def test_preference_job_saves_an_offline_wandb_run(tmp_path):
    out = tmp_path / "out"
    result = cli(*FAST, "stage=preference", "beta_schedule=expert", "logger=wandb",
                 "logger.tags=[unit]", "train.preference.max_train_samples=16",
                 "train.preference.max_steps=2", "train.preference.grad_accum=1",
                 "train.preference.log_every=1", "train.preference.analysis_samples=4",
                 f"paths.cache_dir={tmp_path}/cache", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "upload with: wandb sync" in result.stdout
    # The run file is small (no 32 KiB block boundary splits these strings).
    record = offline_run_file(out)
    for key in (b"preference/rewards/margins", b"preference/beta/mean",
                b"preference/train_betas", b"histogram", b"eapo/test/hr@1", b"unit"):
        assert key in record, key
    assert (out / "history.jsonl").read_text().strip()


def test_failed_job_still_finishes_its_wandb_run(tmp_path):
    out = tmp_path / "out"
    result = cli("stage=data", "dataset=atomic", "logger=wandb",
                 f"dataset.source.inter_path={tmp_path}/missing.inter",
                 f"dataset.source.item_path={tmp_path}/missing.item",
                 f"paths.cache_dir={tmp_path}/cache", f"hydra.run.dir={out}")
    assert result.returncode == 2 and "missing.inter" in result.stderr
    assert "upload with: wandb sync" in result.stdout
    offline_run_file(out)


def test_wandb_mode_comes_from_the_config_then_the_users_settings_then_offline(
        tmp_path, monkeypatch):
    import pytest
    import wandb

    from eapo_exp.errors import ConfigError
    from eapo_exp.tracking import resolve_wandb_mode

    def resolved(mode=None):
        wandb.teardown()  # wandb.setup() keeps the settings it read first
        try:
            return resolve_wandb_mode(mode)
        finally:
            wandb.teardown()

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)  # no ./wandb/settings of the repository's
    assert resolved() == "offline"
    assert resolved("online") == "online"
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "settings").write_text("[default]\nmode = disabled\n")
    assert resolved() == "disabled"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert resolved() == "online"
    assert resolved("offline") == "offline"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolved() == "offline"
    monkeypatch.setenv("WANDB_MODE", "onlin")
    with pytest.raises(ConfigError, match="WANDB_MODE must be one of online, offline, disabled"):
        resolved()
