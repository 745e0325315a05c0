"""Nothing lost, nothing silently wrong: results independent of what the process drew
before, damaged artifacts rebuilt, read-only and full caches, resumed runs that keep their
whole story, and divergence beyond NaN."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from eapo_exp.pipeline import run_stages
from eapo_exp.tracking import RunTracker
from eapo_exp.training.loop import LoopSettings, TrainingDiverged, TrainLoop
from tests.conftest import FAST
from tests.test_resume_and_faults import cli, tiny_lora_model

JOB = ["method=eapo", "stage=all", "eval.max_samples=30", "train.sft.max_train_samples=48",
       "train.sft.epochs=1", "train.preference.max_train_samples=16",
       "train.preference.max_steps=4", "train.preference.analysis_samples=4"]


def run(cfg, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    return run_stages(cfg, RunTracker(out), out)


def summary(metrics: dict) -> dict:
    return {"sft_loss": metrics["sft"]["final"]["loss"],
            "preference_loss": metrics["preference"]["final"]["loss"],
            **{f"{label}/{k}": metrics["eval"][label]["test"][k]
               for label in ("sft", "eapo") for k in ("hr@1", "hr@5", "ndcg@5")}}


@pytest.fixture(scope="module")
def cold(tmp_path_factory):
    """The job once, from an empty cache."""
    from tests.conftest import compose_config

    root = tmp_path_factory.mktemp("cold")
    cfg = compose_config([*FAST, f"paths.cache_dir={root}/cache", *JOB])
    return root, run(cfg, root / "out")


def test_same_result_whatever_the_process_drew_before(cold, fast_config, tmp_path):
    """A warm cache (the expert built by an earlier job) and other draws before the job
    must not change a number: LoRA and training RNG come from the config seed."""
    _, first = cold
    cache = tmp_path / "cache"
    run(fast_config("stage=expert", cache=cache), tmp_path / "expert")
    torch.manual_seed(12345)
    torch.rand(1000)
    second = run(fast_config(*JOB, cache=cache), tmp_path / "out")
    assert summary(second) == summary(first)


def damage_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def damage_same_size(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind,pattern,damage,forget", [
    ("experts", "*.pt", damage_same_size, ()),
    ("samples", "**/*.arrow", damage_truncate, ()),
    # Read only when the preference model is trained again.
    ("reference_logps", "reference.pt", damage_same_size, ("preference", "evaluations")),
    ("evaluations", "results.json", damage_truncate, ()),
])
def test_damaged_artifact_is_moved_aside_and_rebuilt(cold, fast_config, tmp_path, caplog, kind,
                                                     pattern, damage, forget):
    root, first = cold
    cache = tmp_path / "cache"
    subprocess.run(["cp", "-a", str(root / "cache"), str(cache)], check=True)
    for unused in forget:
        shutil.rmtree(cache / "artifacts" / unused)
    victims = sorted((cache / "artifacts" / kind).glob(f"*/{pattern}"))
    assert victims, f"no {pattern} in {kind}"
    damage(victims[0])
    caplog.set_level("WARNING")
    again = run(fast_config(*JOB, cache=cache), tmp_path / "out")
    assert summary(again) == summary(first)
    assert any("is damaged" in r.getMessage() and kind in r.getMessage() for r in caplog.records)
    assert list((cache / "artifacts" / kind).glob(".damaged-*"))


@contextlib.contextmanager
def mounted(*args: str):
    target = args[-1]
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount here ({result.stderr.strip()})")
    try:
        yield
    finally:
        subprocess.run(["umount", target], check=False)


def test_read_only_cache_serves_a_job_that_is_all_cached(cold, tmp_path):
    root, first = cold
    cache = tmp_path / "cache"
    subprocess.run(["cp", "-a", str(root / "cache"), str(cache)], check=True)
    with mounted("--bind", str(cache), str(cache)):
        subprocess.run(["mount", "-o", "remount,ro,bind", str(cache)], check=True)
        result = cli(*FAST, *JOB, f"paths.cache_dir={cache}", f"hydra.run.dir={tmp_path}/out")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert summary(metrics) == summary(first)


def test_full_disk_is_one_line_and_leaves_no_partial_files(tmp_path):
    cache = tmp_path / "small"
    cache.mkdir()
    with mounted("-t", "tmpfs", "-o", "size=400k", "tmpfs", str(cache)):
        result = cli(*FAST, *JOB, f"paths.cache_dir={cache}", f"hydra.run.dir={tmp_path}/out")
        leftovers = [p.relative_to(cache) for p in cache.rglob("*")
                     if p.name.startswith(".") and p.name not in (".complete", ".manifest.json")
                     or ".step-" in p.name]
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "eapo-exp: error" in line]
    assert len(errors) == 1 and "disk is full" in errors[0] and "paths.cache_dir" in errors[0]
    assert "Traceback" not in result.stderr
    assert leftovers == []


def test_resume_at_the_last_step_keeps_history_and_final_stats(tmp_path):
    settings = LoopSettings(total_steps=4, checkpoint_every=2, log_every=1, max_grad_norm=0.0)
    model = tiny_lora_model()
    weight = next(p for p in model.parameters() if p.requires_grad)

    def step_loss(step, micro):
        return (weight ** 2).sum() * (step + 1), {}

    first = TrainLoop(model, settings, tmp_path / "ckpt", progress=False).run(step_loss)
    logged = []
    resumed_loop = TrainLoop(tiny_lora_model(), settings, tmp_path / "ckpt", progress=False,
                             on_log=lambda step, stats: logged.append(step))
    resumed = resumed_loop.run(step_loss)
    assert resumed["resumed_from_step"] == 4
    assert resumed["final"] == first["final"] and "grad_norm" in resumed["final"]
    assert logged == [1, 2, 3, 4]  # the resumed job's log holds the whole run


def test_vanishing_gradient_stops_the_run_naming_the_steps(tmp_path):
    model = tiny_lora_model()
    weight = next(p for p in model.parameters() if p.requires_grad)
    loop = TrainLoop(model, LoopSettings(total_steps=20, dead_gradient_steps=3), tmp_path,
                     progress=False)

    def step_loss(step, micro):  # finite loss, no gradient from step 3 on (saturated model)
        scale = 1.0 if step < 2 else 0.0
        return (weight ** 2).sum() * scale + 1.0, {}

    with pytest.raises(TrainingDiverged, match="no gradient for 3 steps in a row"):
        loop.run(step_loss)


def test_diverging_preference_run_exits_with_the_step(tmp_path):
    result = cli(*FAST, "method=eapo", "train.preference.lr=1e6", "train.preference.max_steps=30",
                 "train.preference.max_train_samples=32", "eval.max_samples=10",
                 f"paths.cache_dir={tmp_path}/c", f"hydra.run.dir={tmp_path}/out")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "eapo-exp: error" in line]
    assert len(errors) == 1 and "no gradient for 5 steps" in errors[0]
