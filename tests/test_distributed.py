"""Real multi-process runs on CPU (gloo): `accelerate launch --multi_gpu` with
ACCELERATE_USE_CPU=1 starts N ranks (DistributedType.MULTI_CPU). Each test checks the
process count the job itself saw, then that N processes compute what one process computes
over the same global batch."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from eapo_exp.config import PreferenceConfig
from eapo_exp.distributed import end_processes, shard_range
from eapo_exp.training.checkpoint import latest_checkpoint
from tests.conftest import FAST

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 420


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_thread_env() -> dict:
    # Two torch processes on two cores: one thread each, or they slow each other 5-25x.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def launch(processes: int, args: list[str], **popen) -> list[str]:
    if processes == 1:
        return [sys.executable, *args]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), *args]


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the launcher and every rank (torch elastic starts ranks in sessions of their
    own, so killing the launcher's process group would leave them running)."""
    tree = psutil.Process(process.pid)
    for member in [*tree.children(recursive=True), tree]:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.send_signal(signal.SIGKILL)
    process.wait()


def run(processes: int, args: list[str]) -> subprocess.CompletedProcess:
    env = {**one_thread_env(), "ACCELERATE_USE_CPU": "1"}
    result = subprocess.run(launch(processes, args), cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=TIMEOUT_S, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_shards_cover_every_item_once():
    for count in (0, 1, 5, 8, 101):
        for processes in (1, 2, 3, 8):
            shards = [shard_range(count, processes, rank) for rank in range(processes)]
            assert [i for shard in shards for i in shard] == list(range(count))
            assert max(map(len, shards)) - min(map(len, shards)) <= 1


def _gather_then_end(rank: int, store: str, results) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    ranks = [None, None]
    dist.all_gather_object(ranks, rank)
    if rank == 1:
        time.sleep(1.0)  # the other process reaches the end first and must wait here
    end_processes()
    results.put((rank, ranks, dist.is_initialized()))


def test_end_processes_waits_for_every_process_then_destroys_the_group(tmp_path):
    context = torch.multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_gather_then_end,
                               args=(rank, str(tmp_path / "store"), results))
               for rank in (0, 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    reports = sorted(results.get(timeout=5) for _ in workers)
    assert reports == [(0, [0, 1], False), (1, [0, 1], False)]


def test_two_process_step_equals_one_process_step(tmp_path):
    script = str(REPO / "tests" / "scripts" / "ddp_step.py")
    results = {}
    for processes in (1, 2):
        out = tmp_path / f"p{processes}"
        out.mkdir()
        run(processes, [script, str(out)])
        results[processes] = torch.load(out / "result.pt", weights_only=False)
    one, two = results[1], results[2]
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    # Every micro-batch 0..3 ran exactly once (the mean of their indices is 1.5).
    assert one["stats"]["micro_index"] == two["stats"]["micro_index"] == 1.5
    assert two["stats"]["loss"] == pytest.approx(one["stats"]["loss"], rel=1e-6)
    assert one["grads"].keys() == two["grads"].keys() and one["grads"]
    for name, grad in one["grads"].items():
        torch.testing.assert_close(two["grads"][name], grad, rtol=1e-5, atol=1e-7,
                                   msg=lambda m, n=name: f"{n}: {m}")


# One global batch whatever the process count: SFT 4 x 2, preference 2 x 2.
STEPS = 40
JOB = [*FAST, "method=eapo", "stage=all", "logger=wandb", "eval.max_samples=30",
       "train.sft.max_train_samples=64", "train.sft.epochs=2", "train.sft.batch_size=4",
       "train.sft.grad_accum=2", "train.preference.max_train_samples=32",
       f"train.preference.max_steps={STEPS}", "train.preference.grad_accum=2",
       "train.preference.checkpoint_every=4", "train.preference.analysis_samples=8"]


def adapter_weights(metrics: dict) -> dict[str, torch.Tensor]:
    return load_file(str(Path(metrics["preference"]["artifact"]) / "adapter" /
                         "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """The same job on one process and on two, each with its own cache."""
    root = tmp_path_factory.mktemp("jobs")
    out = {}
    for processes in (1, 2):
        run_dir = root / f"run{processes}"
        run(processes, ["-m", "eapo_exp", *JOB, f"paths.cache_dir={root}/cache{processes}",
                        f"hydra.run.dir={run_dir}"])
        out[processes] = run_dir
    return root, out


def assert_same_results(one: Path, two: Path) -> None:
    """The job in run directory `two` (two processes) computed what `one` (one) did."""
    metrics = {run: json.loads((run / "metrics.json").read_text()) for run in (one, two)}
    for label in ("sft", "eapo"):
        for split in ("valid", "test"):
            for key in ("hr@1", "hr@5", "ndcg@5", "n"):
                assert metrics[two]["eval"][label][split][key] == pytest.approx(
                    metrics[one]["eval"][label][split][key]), (label, split, key)
    # Sharded evaluation: every sample scored, in the same order, with the same scores.
    for split in ("valid", "test"):
        rows = {p: [json.loads(line) for line in
                    (p / f"predictions_eapo_{split}.jsonl").read_text().splitlines()]
                for p in (one, two)}
        assert [r["index"] for r in rows[two]] == list(range(len(rows[one])))
        for a, b in zip(rows[one], rows[two]):
            assert b["target_rank"] == a["target_rank"]
            assert b["scores"] == pytest.approx(a["scores"], abs=1e-3)
    # float32 throughout; two processes sum gradients in another order: 1e-4 absolute.
    weights = {run: adapter_weights(metrics[run]) for run in (one, two)}
    assert weights[one].keys() == weights[two].keys()
    for name in weights[one]:
        torch.testing.assert_close(weights[two][name], weights[one][name], rtol=1e-3, atol=1e-4)


def test_two_process_job_writes_once_and_matches_one_process(jobs):
    _, runs = jobs
    metrics = {p: json.loads((runs[p] / "metrics.json").read_text()) for p in (1, 2)}
    assert metrics[2]["status"] == "ok"
    assert metrics[1]["runtime"]["num_processes"] == 1
    assert metrics[2]["runtime"]["num_processes"] == 2
    assert len(list(runs[2].rglob("metrics.json"))) == 1
    assert len(list((runs[2] / "wandb").glob("offline-run-*"))) == 1
    # Logged once per step: the main process's history only.
    steps = {p: [row["step"] for row in map(json.loads, (runs[p] / "history.jsonl")
                                            .read_text().splitlines())
                 if row["phase"] == "preference"] for p in (1, 2)}
    every = PreferenceConfig.log_every
    assert steps[2] == list(range(every, STEPS + 1, every)) == steps[1]
    assert_same_results(runs[1], runs[2])


def test_submitit_job_with_two_tasks_is_one_two_process_job(jobs, tmp_path):
    """One sweep point on N devices under SLURM: submitit starts N tasks of the job and
    eapo_exp.submitit_ranks joins them into one process group. submitit's local executor
    runs the same task machinery without a scheduler."""
    _, runs = jobs
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "eapo_exp", "-m", *JOB, f"paths.cache_dir={tmp_path}/cache",
         "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
         f"hydra.sweep.dir={sweep}"],
        cwd=REPO, env=one_thread_env(), capture_output=True, text=True, timeout=TIMEOUT_S,
        check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    (job,) = [m.parent for m in sweep.glob("*/metrics.json")]
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["status"] == "ok"
    assert metrics["runtime"]["num_processes"] == 2
    task_logs = sorted(p.name for p in (sweep / ".submitit").glob("*/*_log.out"))
    assert [name.split("_")[1] for name in task_logs] == ["0", "1"]
    assert_same_results(runs[1], job)


def test_killed_two_process_job_resumes_to_the_same_result(jobs, tmp_path):
    root, runs = jobs
    finished = json.loads((runs[2] / "metrics.json").read_text())
    cache = tmp_path / "cache"
    shutil.copytree(root / "cache2", cache)
    artifacts = cache / "artifacts"
    # Forget the trained preference model and its evaluation; keep data, expert, SFT,
    # reference log-probs and expert scores.
    shutil.rmtree(artifacts / "preference")
    for evaluation in (artifacts / "evaluations").iterdir():
        shutil.rmtree(evaluation)
    args = ["-m", "eapo_exp", *JOB, f"paths.cache_dir={cache}"]
    env = {**one_thread_env(), "ACCELERATE_USE_CPU": "1"}
    process = subprocess.Popen(launch(2, [*args, f"hydra.run.dir={tmp_path}/killed"]),
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + TIMEOUT_S
    reached = None
    while time.time() < deadline and process.poll() is None:
        checkpoints = [latest_checkpoint(w / "checkpoints")
                       for w in (artifacts / "preference").glob("*.work")]
        reached = max((int(c.name.split("-")[1]) for c in checkpoints if c), default=None)
        if reached is not None and reached >= 4:
            break
        time.sleep(0.01)
    kill_tree(process)
    assert reached is not None and reached < STEPS, f"not killed mid-preference ({reached})"

    assert not list((artifacts / "preference").glob("*/.complete")), "finished before the kill"
    run(2, [*args, f"hydra.run.dir={tmp_path}/resumed"])
    resumed = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert 0 < resumed["preference"]["resumed_from_step"] < STEPS
    for split in ("valid", "test"):
        for key in ("hr@1", "hr@5", "ndcg@5"):
            assert resumed["eval"]["eapo"][split][key] == pytest.approx(
                finished["eval"]["eapo"][split][key])
    before, after = adapter_weights(finished), adapter_weights(resumed)
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=1e-5, atol=1e-6)
