"""Faults: NaN loss stops with the step named; a killed run resumes to the same result;
concurrent jobs share one cache artifact; bad input gets a one-line error."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from eapo_exp.cache import ArtifactCache
from eapo_exp.pipeline import run_stages
from eapo_exp.tracking import RunTracker
from eapo_exp.training.checkpoint import latest_checkpoint
from eapo_exp.training.loop import TrainingDiverged, TrainLoop
from eapo_exp.training.settings import LoopSettings
from tests.conftest import FAST

REPO = Path(__file__).resolve().parents[1]


def tiny_lora_model():
    from eapo_exp.backbones import TinyBackbone
    from eapo_exp.backbones.lora import apply_lora

    loaded = TinyBackbone(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64).load(
        ["a b c d e f g"])
    return apply_lora(loaded.model, r=4, alpha=8)


def test_nan_loss_stops_with_step_and_keeps_checkpoint(tmp_path):
    model = tiny_lora_model()
    loop = TrainLoop(model, LoopSettings(total_steps=10, checkpoint_every=1, log_every=1),
                     tmp_path / "ckpt", progress=False)
    weight = next(p for p in model.parameters() if p.requires_grad)

    def step_loss(step, micro):
        loss = (weight ** 2).sum()
        return (loss * math.nan if step == 3 else loss), {}

    with pytest.raises(TrainingDiverged, match="step 4"):
        loop.run(step_loss)
    assert latest_checkpoint(tmp_path / "ckpt").name == "step-3"


def test_loop_settings_come_from_the_config_node_and_are_checked():
    from omegaconf import OmegaConf

    from eapo_exp.errors import ConfigError
    from eapo_exp.training.settings import validate_loop
    from tests.conftest import compose_config

    cfg = compose_config(["dataset=synthetic", "train.preference.max_steps=7"])
    sft, pref = cfg.train.sft, cfg.train.preference
    settings = LoopSettings.from_config(sft, num_samples=100)
    assert settings.total_steps == math.ceil(100 / (sft.batch_size * sft.grad_accum))
    assert (settings.lr, settings.warmup_ratio, settings.schedule) == (sft.lr, sft.warmup_ratio,
                                                                       "cosine")
    settings = LoopSettings.from_config(pref, num_samples=100)
    assert (settings.total_steps, settings.schedule, settings.grad_accum) == (7, "constant",
                                                                              pref.grad_accum)
    validate_loop(pref, "train.preference")
    for key, bad in (("warmup_ratio", 2.0), ("schedule", "linear"), ("lr", 0.0)):
        with pytest.raises(ConfigError, match=f"train.preference.{key}"):
            validate_loop(OmegaConf.merge(pref, {key: bad}), "train.preference")
    with pytest.raises(ConfigError, match="train.sft.grad_accum=2 cannot be split"):
        validate_loop(sft, "train.sft", num_processes=3)


def slow_build(root: str, marker_dir: str, record_dir: str, barrier) -> None:
    cache = ArtifactCache(root)

    def build(directory: Path) -> None:
        Path(marker_dir, f"built-{os.getpid()}").touch()
        time.sleep(1.0)
        (directory / "payload.txt").write_text("complete")

    barrier.wait()  # both processes ask for the artifact at the same moment
    started = time.time()
    path = str(cache.get_or_build("demo", {"key": 1}, build))
    record = {"pid": os.getpid(), "start": started, "end": time.time(), "path": path}
    Path(record_dir, f"{os.getpid()}.json").write_text(json.dumps(record))


def test_two_jobs_share_one_artifact(tmp_path):
    markers, records = tmp_path / "markers", tmp_path / "records"
    markers.mkdir()
    records.mkdir()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    workers = [ctx.Process(target=slow_build, args=(str(tmp_path / "cache"), str(markers),
                                                    str(records), barrier)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    first, second = (json.loads(p.read_text()) for p in records.iterdir())
    # Two processes whose requests overlapped: one built, the other waited and reused.
    assert first["pid"] != second["pid"]
    assert max(first["start"], second["start"]) < min(first["end"], second["end"])
    assert first["path"] == second["path"]
    assert len(list(markers.iterdir())) == 1
    assert Path(first["path"], "payload.txt").read_text() == "complete"
    leftovers = [p.name for p in Path(first["path"]).parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no temp directory, and the claim file is removed on release


def cli(*args, cwd=REPO, timeout=600):
    return subprocess.run([sys.executable, "-m", "eapo_exp", *args], check=False, cwd=cwd,
                          timeout=timeout,
                          capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})


def test_missing_data_file_is_one_line_error(tmp_path):
    result = cli("stage=data", "dataset=atomic", f"dataset.source.inter_path={tmp_path}/no.inter",
                 f"dataset.source.item_path={tmp_path}/no.item", f"paths.cache_dir={tmp_path}/c",
                 f"hydra.run.dir={tmp_path}/out")
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if "eapo-exp: error" in line]
    assert len(error_lines) == 1 and "no.inter" in error_lines[0]
    assert "Traceback" not in result.stderr
    failed = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert failed["status"] == "failed"


def test_out_of_range_value_rejected_at_startup(tmp_path):
    result = cli("stage=data", "dataset=synthetic", "dataset.num_negatives=0",
                 f"paths.cache_dir={tmp_path}/c", f"hydra.run.dir={tmp_path}/out")
    assert result.returncode == 2 and "num_negatives" in result.stderr


PREFERENCE = [*FAST, "stage=preference", "beta_schedule=beta_dpo", "eval.max_samples=20",
              "train.preference.max_train_samples=48", "train.preference.max_steps=24",
              "train.preference.grad_accum=1", "train.preference.checkpoint_every=3",
              "train.preference.analysis_samples=4"]


def test_killed_preference_run_resumes_to_same_metrics(fast_config, tmp_path):
    cache = tmp_path / "cache"
    overrides = PREFERENCE[len(FAST):]
    uninterrupted = run_stages(fast_config(*overrides, cache=cache), RunTracker(tmp_path),
                               tmp_path)
    artifact = Path(uninterrupted["preference"]["artifact"])
    full_curve = (artifact / "training_curve.jsonl").read_text()
    full_betas = np.load(artifact / "train_betas.npy")
    # Forget the finished preference artifact (keep data, expert, SFT, reference caches).
    shutil.rmtree(artifact)

    command = [sys.executable, "-m", "eapo_exp", *PREFERENCE, f"paths.cache_dir={cache}",
               f"hydra.run.dir={tmp_path}/killed"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    work = cache / "artifacts" / "preference"
    deadline = time.time() + 300
    while time.time() < deadline:
        found = [latest_checkpoint(w / "checkpoints") for w in work.glob("*.work")]
        if any(c is not None and int(c.name.split("-")[1]) >= 6 for c in found):
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()

    out = tmp_path / "resumed"
    out.mkdir()
    resumed = run_stages(fast_config(*overrides, cache=cache), RunTracker(out), out)
    resumed_from = resumed["preference"]["resumed_from_step"]
    assert 0 < resumed_from < 24
    # The resumed artifact tells the whole run: every logged step and every pair's beta.
    # Steps are compared first, so a divergence names its first step: at or before
    # `resumed_from` the killed process differed from the in-process run, after it the resume.
    resumed_artifact = Path(resumed["preference"]["artifact"])
    curve = [json.loads(line) for line in (resumed_artifact / "training_curve.jsonl").open()]
    expected = [json.loads(line) for line in full_curve.splitlines()]
    assert [row["step"] for row in curve] == [row["step"] for row in expected]
    for row, want in zip(curve, expected):
        assert row["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-6), (
            f"step {row['step']}: loss {row['loss']!r} against {want['loss']!r} without the "
            f"kill (resumed from step {resumed_from}); all steps: "
            f"{[(r['step'], r['loss']) for r in curve]} against "
            f"{[(r['step'], r['loss']) for r in expected]}")
    for key in ("hr@1", "hr@5", "ndcg@5"):
        assert resumed["eval"]["beta_dpo"]["test"][key] == pytest.approx(
            uninterrupted["eval"]["beta_dpo"]["test"][key])
    torch.testing.assert_close(
        torch.tensor(resumed["preference"]["final"]["loss"]),
        torch.tensor(uninterrupted["preference"]["final"]["loss"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.load(resumed_artifact / "train_betas.npy"), full_betas,
                               rtol=1e-5)
