"""The command line under faults (issue 17): jobs started together get their own run
directories, sweep job directories are one flat component, empty splits are rejected with
their counts, exit codes a script can trust (failed sweep jobs, Ctrl-C), config values
checked at startup with one-line errors, and a failed job's W&B run carries the error."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from eapo_exp.data.interactions import InteractionData
from eapo_exp.data.samples import build_samples
from eapo_exp.errors import DataError
from eapo_exp.run_dirs import MAX_DIRNAME, claim_dir, short_dirname
from tests.conftest import FAST

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


def start(*args: str, cwd: Path = REPO) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "eapo_exp", *args], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:  # timed out: leave no job running
            process.kill()
            process.wait()
    return process.returncode, stdout, stderr


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("eapo-exp: error")]


def write_atomic(directory: Path, name: str, users: int, per_user: int, items: int) -> Path:
    """A RecBole .inter file (user u sees items u, u+1, ... in time order) and its .item."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = [f"u{u}\ti{(u + j) % items}\t4\t{1000 * j + u}"
            for u in range(users) for j in range(per_user)]
    (directory / f"{name}.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "\n".join(rows) + "\n")
    (directory / "items.item").write_text(
        "item_id:token\tmovie_title:token_seq\n"
        + "".join(f"i{i}\tRecord {i}\n" for i in range(items)))
    return directory / f"{name}.inter"


def cache_entries(cache: Path, kind: str) -> list[str]:
    root = cache / "artifacts" / kind
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


# -- run and sweep directories -----------------------------------------------------------------


def test_jobs_started_together_get_their_own_run_directories(tmp_path):
    # cwd=tmp_path: the default run directory (outputs/runs/<second>_<dataset>) lands there.
    args = [*FAST, "stage=data", f"paths.cache_dir={tmp_path}/cache"]
    processes = [start(*args, cwd=tmp_path) for _ in range(2)]
    for code, _, stderr in map(finish, processes):
        assert code == 0, stderr[-2000:]
    runs = sorted((tmp_path / "outputs" / "runs").iterdir())
    assert len(runs) == 2, runs
    for run in runs:
        assert json.loads((run / "metrics.json").read_text())["status"] == "ok"
        log = (run / "__main__.log").read_text()
        assert log.count("samples per split") == 1  # one job's log, not two interleaved


def test_run_and_sweep_dirs_are_claimed_under_output_root(tmp_path):
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("config", [f"paths.output_root={tmp_path}"], return_hydra_config=True)
    run_dir, sweep_dir = cfg.hydra.run.dir, cfg.hydra.sweep.dir
    assert Path(run_dir).parent == tmp_path / "runs" and Path(run_dir).is_dir()
    assert Path(sweep_dir).parent == tmp_path / "multirun" and Path(sweep_dir).is_dir()
    assert cfg.hydra.run.dir == run_dir  # resolved again: the same claim, no second directory
    assert len(list((tmp_path / "runs").iterdir())) == 1


def test_claim_dir_gives_every_caller_its_own_directory(tmp_path, monkeypatch):
    base = str(tmp_path / "runs" / "2026-01-01_00-00-00_synthetic")
    with ThreadPoolExecutor(8) as pool:
        claimed = list(pool.map(lambda _: claim_dir(base), range(8)))
    assert sorted(claimed) == sorted([base] + [f"{base}-{n}" for n in range(1, 8)])
    monkeypatch.setenv("RANK", "1")  # accelerate's other processes claim nothing here
    scratch = claim_dir(base)
    assert not scratch.startswith(str(tmp_path))
    shutil.rmtree(scratch)


@pytest.mark.parametrize("overrides", [
    "dataset.source.inter_path=/data/books/ratings.inter,dataset.item_noun=book",
    "dataset.split_ratios=[0.7, 0.2, 0.1]",
    "logger.tags=['a b',\"c*d\"],name=x?y|z:é<>",
    "beta_schedule.u_beta=" + ",".join(f"0.{n:04d}" for n in range(100)),
])
def test_job_dirnames_are_one_safe_component(overrides):
    name = short_dirname(overrides)
    assert re.fullmatch(r"[A-Za-z0-9._,=+@-]+", name) and len(name) <= MAX_DIRNAME


def test_sweep_over_data_files_flat_dirs_failed_job_fails_sweep(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    good = write_atomic(data / "good", "ratings", users=40, per_user=8, items=40)
    single = write_atomic(data / "single", "ratings", users=40, per_user=1, items=40)
    # cwd=tmp_path: the default sweep directory (outputs/multirun/<second>) lands there.
    code, _, stderr = finish(start(
        "-m", "stage=data", "dataset=atomic", "dataset.item_noun=record",
        f"dataset.source.inter_path={good},{single}",
        f"dataset.source.item_path={data}/good/items.item", f"paths.cache_dir={cache}",
        cwd=tmp_path))
    assert code == 1, stderr[-3000:]
    lines = error_lines(stderr)
    assert len(lines) == 1 and "1 of 2 sweep jobs failed: 1_" in lines[0], stderr[-3000:]
    assert "Traceback" not in stderr

    sweeps = list((tmp_path / "outputs" / "multirun").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p.parent for p in sweeps[0].rglob("metrics.json"))
    assert [job.parent for job in jobs] == sweeps[0:1] * 2  # one flat directory per job
    assert [job.name[:2] for job in jobs] == ["0_", "1_"]
    assert (sweeps[0] / "report").is_dir()  # the report is still written

    ok, failed = (json.loads((job / "metrics.json").read_text()) for job in jobs)
    assert ok["status"] == "ok" and failed["status"] == "failed"
    assert "DataError: empty split(s) train, valid, test" in failed["error"]
    assert "40 interactions" in failed["error"] and "dropped 32/4/4" in failed["error"]
    assert len(cache_entries(cache, "samples")) == 1  # only the good data was cached


# -- data -------------------------------------------------------------------------------------


def interactions(rows: list[tuple[str, str, float]], items: int) -> InteractionData:
    return InteractionData(pd.DataFrame(rows, columns=["user", "item", "timestamp"]),
                           {f"i{i}": f"title {i}" for i in range(items)})


@pytest.mark.parametrize("rows,items,kwargs,needle", [
    ([(f"u{u}", f"i{u % 30}", float(u)) for u in range(50)], 30, {},
     ("samples train/valid/test 0/0/0 from 50 interactions (40/5/5 by the time split) of 50 "
      "users on 30 items; dropped 40/5/5 with fewer than dataset.min_history=1")),
    ([(f"u{u}", "i0", float(3 * u + j)) for u in range(10) for j in range(3)], 1, {},
     "the item catalogue has 1 item(s) after filtering"),
    ([(f"u{u}", f"i{(u + j) % 8}", float(10 * u + j)) for u in range(20) for j in range(5)],
     8, {"num_negatives": 5}, "80 with fewer than dataset.num_negatives=5 never-interacted"),
])
def test_data_without_samples_rejected_with_counts(rows, items, kwargs, needle):
    with pytest.raises(DataError) as info:
        build_samples(interactions(rows, items), **kwargs)
    assert needle in str(info.value) and "\n" not in str(info.value)


# -- exit codes and startup checks --------------------------------------------------------------


def test_ctrl_c_exits_130_with_status_interrupted(tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "out"
    args = [*FAST, "stage=expert", "expert.max_epochs=100000", "expert.patience=100000",
            f"paths.cache_dir={cache}", f"hydra.run.dir={out}"]
    # A child inherits an ignored SIGINT (pytest run as a shell's background job), a handled
    # one comes back as the default: give the job Python's own KeyboardInterrupt.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = start(*args)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.time() + 120
    while not (cache / "artifacts" / "experts").is_dir() and process.poll() is None:
        if time.time() > deadline:
            process.kill()
            pytest.fail("the expert stage never started")
        time.sleep(0.1)
    time.sleep(1.0)  # inside expert training
    process.send_signal(signal.SIGINT)
    code, _, stderr = finish(process, timeout=60)
    assert code == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert "eapo-exp: interrupted; resume with:" in stderr
    status = json.loads((out / "metrics.json").read_text())
    assert status["status"] == "interrupted" and status["stage"] == "expert"
    assert status["resume"].endswith(" ".join(args))  # the same command resumes the job


@pytest.mark.parametrize("overrides,needle", [
    (["stage=sft", "+train.sft.foo=1"], "unknown config key train.sft.foo"),
    (["stage=all", "loss=ipo", "+loss.taux=1"], "unexpected keyword argument 'taux'"),
    (["stage=sft", "prompt.item_repr=hybrid", "train=zero_shot"],
     "prompt.item_repr=hybrid needs SFT"),
    (["stage=all", "eval.mode=bogus"], "eval.mode must be one of score, beam, generate"),
    (["stage=all", "eval.splits=[valid,tset]"], "eval.splits names 'tset'"),
    (["stage=data", "logger=wandb", "logger.mode=bogus"],
     "logger.mode must be one of online, offline, disabled"),
])
def test_bad_config_is_one_line_error_at_startup(tmp_path, overrides, needle):
    cache = tmp_path / "cache"
    code, _, stderr = finish(start(*FAST, *overrides, f"paths.cache_dir={cache}",
                                   f"hydra.run.dir={tmp_path}/out"))
    assert code == 2, stderr[-3000:]
    lines = error_lines(stderr)
    assert len(lines) == 1 and needle in lines[0], stderr[-3000:]
    assert "Traceback" not in stderr
    assert not cache.exists()  # rejected before any data was read or model trained


def test_failed_wandb_run_carries_the_error(tmp_path, monkeypatch):
    import wandb

    from eapo_exp.tracking import RunTracker

    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    tracker = RunTracker(tmp_path, backend="wandb", mode="offline", name="failing-job")
    tracker.finish(failed=True, error="DataError: no-such-file-7f3a.inter is missing")
    # finish() returns before W&B's service process has flushed the run file; the service
    # writes everything before it shuts down.
    wandb.teardown()
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and b"no-such-file-7f3a.inter is missing" in runs[0].read_bytes()
