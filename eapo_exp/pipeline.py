"""Runs one job: validates the config, then each stage up to `cfg.stage`, reusing cached
artifacts, and writes `config_resolved.yaml` and `metrics.json` into the job's output dir.

Under `accelerate launch` every process runs the job (shared artifacts are built once,
training and scoring are split over the processes); only the main process writes the job's
outputs, history and W&B run."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from eapo_exp.backbones.compile import compile_seconds, resolve_auto_compile
from eapo_exp.cache import ArtifactCache
from eapo_exp.config import Stage
from eapo_exp.distributed import Runtime, default_runtime
from eapo_exp.errors import EapoError, rerun_command
from eapo_exp.methods import METHODS, Method, job_method, sft_method
from eapo_exp.report.tables import format_metric_table
from eapo_exp.tracking import RunTracker
from eapo_exp.validation import validate_config

log = logging.getLogger(__name__)

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def output_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)


def print_tables(rows: dict[str, dict], splits, dataset: str) -> None:
    for split in splits:
        present = {name: r[split] for name, r in rows.items() if split in r}
        if present:
            print(format_metric_table(present, title=f"{dataset} {split}"))


def run_stages(cfg: DictConfig, tracker: RunTracker, out: Path,
               runtime: Runtime | None = None) -> dict:
    from eapo_exp.stages.data_stage import prepare_samples

    runtime = runtime or default_runtime()
    resolve_auto_compile(cfg, runtime.device)
    stage = Stage(cfg.stage)
    # First: a loss or β schedule without a row in the method table fails before training.
    method = job_method(stage.value, cfg.loss.name, cfg.beta_schedule.name,
                        cfg.train.sft.enabled, cfg.prompt.item_repr)
    # A model on hybrid item prompts (LLaRA) reads the expert's item embeddings.
    item_inputs = ("item_expert",) if cfg.prompt.item_repr == "hybrid" else ()
    cache = ArtifactCache(Path(cfg.paths.artifact_cache).resolve())
    metrics: dict = {"stage": stage.value, "timings": {},
                     # pid and wall-clock span: which process ran the job, and when
                     # (parallel launchers' jobs overlap).
                     "runtime": {"device": str(runtime.device),
                                 "num_processes": runtime.num_processes,
                                 "pid": os.getpid(), "started_at": round(time.time(), 3)},
                     "provenance": {}}
    if method is not None:
        metrics["method"] = method.display
    show = print_tables if runtime.is_main else lambda *args: None

    with timed(metrics, "data"):
        samples = prepare_samples(cfg.dataset, cache, runtime)
    metrics["data"] = {**samples.stats, "fingerprint": samples.fingerprint}

    if stage is Stage.chatrec:  # no local model: a chat endpoint ranks the candidates
        from eapo_exp.chatrec.stage import run_chatrec

        label = record_row(metrics, METHODS["chatrec"])
        with timed(metrics, f"eval_{label}"):
            metrics["eval"] = {label: run_chatrec(cfg, samples, out, runtime)}

    if stage in (Stage.expert, Stage.preference, Stage.all):
        from eapo_exp.stages.expert_stage import run_expert_stage

        with timed(metrics, "expert"):
            metrics.update(run_expert_stage(cfg.expert, samples, cache, cfg.dataset.history_len,
                                            runtime))
        record_row(metrics, METHODS["expert_only"], "expert")
        record_row(metrics, METHODS["popularity"])
        show({cfg.expert.name: metrics["expert"], "popularity": metrics["popularity"]},
                     ("valid", "test"), cfg.dataset.name)

    if stage in (Stage.sft, Stage.preference, Stage.all):
        from eapo_exp.stages.eval_stage import evaluate_adapter
        from eapo_exp.stages.sft_stage import prepare_sft, sft_info

        with timed(metrics, "sft"):
            adapter = prepare_sft(cfg, samples, cache,
                                  on_log=lambda step, values: tracker.log("sft", step, values),
                                  runtime=runtime)
        metrics["sft"] = sft_info(adapter)
        metrics["eval"] = {}
        if stage in (Stage.sft, Stage.all):
            label = record_row(metrics, sft_method(adapter is not None, cfg.prompt.item_repr))
            with timed(metrics, f"eval_{label}"):
                metrics["eval"][label] = evaluate_adapter(
                    cfg, samples, adapter, out, label, cache, expert_artifact(metrics), runtime)

    if stage in (Stage.preference, Stage.all):
        from eapo_exp.stages.preference_stage import TRAINING_CURVE, prepare_preference

        label = record_row(metrics, method, extra=item_inputs)
        logged_steps: list[int] = []

        def log_preference(step: int, values: dict) -> None:
            logged_steps.append(step)
            tracker.log("preference", step, values)

        with timed(metrics, "preference"):
            artifact = prepare_preference(cfg, samples, cache, adapter,
                                          Path(metrics["expert"]["artifact"]),
                                          on_log=log_preference, runtime=runtime)
            metrics["preference"] = {"artifact": str(artifact),
                                     **json.loads((artifact / "info.json").read_text())}
            if not logged_steps and runtime.is_main:  # trained earlier: replay its curve
                replay_training_curve(artifact / TRAINING_CURVE, "preference", tracker)
            if runtime.is_main:
                copy_training_arrays(artifact, out, tracker)
        with timed(metrics, f"eval_{label}"):
            metrics["eval"][label] = evaluate_adapter(cfg, samples, artifact / "adapter", out,
                                                      label, cache, expert_artifact(metrics),
                                                      runtime)

    if metrics.get("eval") and runtime.is_main:
        metrics["analysis"] = collect_analysis(metrics["eval"], out)
        show(metrics["eval"], cfg.eval.splits, cfg.dataset.name)
    return metrics


@contextlib.contextmanager
def timed(metrics: dict, stage: str):
    """Write the stage's wall seconds to metrics["timings"][f"{stage}_s"] and, when it
    compiled anything (backbone.compile.enabled), the part spent compiling to
    f"{stage}_compile_s"."""
    started, compiling = time.perf_counter(), compile_seconds()
    yield
    metrics["timings"][f"{stage}_s"] = round(time.perf_counter() - started, 2)
    compiled = compile_seconds() - compiling
    if compiled > 0:
        metrics["timings"][f"{stage}_compile_s"] = round(compiled, 2)
        log.info("%s: %.1f s, of which %.1f s in torch.compile", stage,
                 metrics["timings"][f"{stage}_s"], compiled)


def record_row(metrics: dict, method: Method, label: str | None = None,
               extra: tuple[str, ...] = ()) -> str:
    """Write what a result row is (its method-table name) and what its result depends on
    into metrics["provenance"], so the report reads both; returns the row's label."""
    label = label or method.name
    depends_on = list(dict.fromkeys((*method.depends_on, *extra)))
    metrics["provenance"][label] = {"method": method.name, "depends_on": depends_on}
    return label


def make_tracker(cfg: DictConfig, out: Path, runtime: Runtime) -> RunTracker:
    if not runtime.is_main:  # one history and one W&B run per job
        return RunTracker(out, backend="none", history=False)
    hydra_cfg = HydraConfig.get()
    overrides = [o for o in hydra_cfg.overrides.task if not o.startswith("paths.")]
    name = ",".join(overrides) or "default"
    choices = hydra_cfg.runtime.choices
    tags = [f"{g}={choices.get(g)}" for g in ("loss", "beta_schedule", "dataset", "backbone")
            if choices.get(g)] + list(cfg.logger.tags)
    return RunTracker(out, backend=cfg.logger.name, project=cfg.logger.project,
                      mode=cfg.logger.mode, entity=cfg.logger.entity, name=name,
                      group=cfg.logger.group or choices.get("experiment") or None,
                      job_type=str(Stage(cfg.stage).value), tags=tags,
                      config=OmegaConf.to_container(cfg, resolve=True))


def expert_artifact(metrics: dict) -> Path | None:
    """The job's trained expert (for the error analysis), or None when no expert stage ran."""
    return Path(metrics["expert"]["artifact"]) if "expert" in metrics else None


def collect_analysis(evaluations: dict, out: Path) -> dict:
    """Test-split error analysis per label, plus the reward discrepancy after training."""
    analysis = {}
    for label, splits in evaluations.items():
        entry = dict(splits.get("test", {}).get("analysis", {}))
        analysis[label] = entry
    if (out / "reward_discrepancy.npy").exists():
        values = np.load(out / "reward_discrepancy.npy")
        label = next(reversed(evaluations))  # the preference method is evaluated last
        analysis[label]["reward_discrepancy"] = {
            "mean": float(values.mean()), "std": float(values.std()),
            "share_positive": float((values > 0).mean()), "pairs": int(values.size)}
    return analysis


def replay_training_curve(curve_path: Path, phase: str, tracker: RunTracker) -> None:
    """Log a cached artifact's training curve as this job's own (reports plot it)."""
    if not curve_path.exists():  # artifacts built before curves were kept
        log.info("no training curve in %s; this job's history has none", curve_path.parent)
        return
    rows = [json.loads(line) for line in curve_path.read_text().splitlines() if line.strip()]
    for row in rows:
        step = row.pop("step")
        tracker.log(phase, step, row)
    log.info("replayed %d %s log rows from the cached artifact %s", len(rows), phase,
             curve_path.parent)


def copy_training_arrays(artifact: Path, out: Path, tracker: RunTracker) -> None:
    """Per-pair beta and log-ratio discrepancy seen in training, for reports and W&B."""
    for name in ("train_betas.npy", "train_discrepancy.npy", "reward_discrepancy.npy"):
        if (artifact / name).exists():
            shutil.copy(artifact / name, out / name)
            tracker.log_histogram("preference", name.removesuffix(".npy"),
                                  np.load(artifact / name).tolist())


def heldout_summary(metrics: dict) -> dict:
    """The held-out preference diagnostics after training, for the W&B run's summary."""
    result = (metrics.get("preference") or {}).get("heldout")
    if not result:
        return {}
    values = {f"preference/heldout/{name}": value["mean"]
              for name, value in result["after"].items()}
    return {**values, "preference/heldout/trained": result["trained"]}


def objective(metrics: dict) -> float | None:
    """Validation HR@1 of the job's last evaluated model: what a Hydra sweeper optimises."""
    evaluations = metrics.get("eval") or {}
    if not evaluations:
        return None
    last = evaluations[next(reversed(evaluations))]
    return last.get("valid", {}).get("hr@1")


@dataclass(frozen=True)
class JobResult:
    status: str  # "ok" or "failed" (an interrupted job raises instead)
    objective: float | None  # what a Hydra sweeper optimises (see `objective`)


def run_job(cfg: DictConfig) -> JobResult:
    runtime = default_runtime()
    # Every process of a job writes into the main process's directory (a `${now:}` run
    # directory could differ between processes by a second).
    out = Path(runtime.broadcast(str(output_dir())))
    main = runtime.is_main
    if not main:  # the main process speaks for the job
        logging.getLogger().setLevel(logging.WARNING)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    is_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    tracker = None
    try:
        validate_config(cfg)  # first: a bad logger value must not reach wandb.init
        if resolve_auto_compile(cfg, runtime.device) and main:  # record what ran
            (out / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        tracker = make_tracker(cfg, out, runtime)
        seed_everything(cfg.seed)
        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        started = time.perf_counter()
        metrics = run_stages(cfg, tracker, out, runtime)
        metrics["timings"]["total_s"] = round(time.perf_counter() - started, 2)
        metrics["runtime"]["finished_at"] = round(time.time(), 3)
        metrics["status"] = "ok"
        if main:
            write_json(out / "metrics.json", metrics)
            log.info("wrote %s", out / "metrics.json")
        tracker.summary({**{f"{label}/{split}/{k}": v
                            for label, splits in metrics.get("eval", {}).items()
                            for split, values in splits.items() for k, v in values.items()
                            if isinstance(v, (int, float))},
                         **heldout_summary(metrics)})
        tracker.finish()
        return JobResult("ok", objective(metrics))
    except KeyboardInterrupt:  # __main__ prints the resume command and exits 130
        record_interrupt(cfg, out, tracker, main)
        raise
    except Exception as error:
        message = record_failure(cfg, out, tracker, main, error)
        if is_sweep:  # one failed job must not end the sweep; the report lists it
            log.error("job failed: %s (traceback in %s)", message, out / "error.txt")
            return JobResult("failed", None)
        if isinstance(error, EapoError):
            print(f"eapo-exp: error: {error}", file=sys.stderr)
            sys.exit(2)
        raise


def record_failure(cfg: DictConfig, out: Path, tracker: RunTracker | None, main: bool,
                   error: Exception) -> str:
    """metrics.json status "failed" and error.txt (the traceback); returns the error line."""
    message = f"{type(error).__name__}: {error}"
    if main:
        write_json(out / "metrics.json", {"status": "failed", "error": message,
                                          "stage": Stage(cfg.stage).value})
        (out / "error.txt").write_text(traceback.format_exc())
    if tracker is not None:
        tracker.finish(failed=True, error=message)
    return message


def record_interrupt(cfg: DictConfig, out: Path, tracker: RunTracker | None,
                     main: bool) -> None:
    """metrics.json status "interrupted" with the command that resumes the job."""
    command = rerun_command()
    if main:
        write_json(out / "metrics.json", {"status": "interrupted", "stage": Stage(cfg.stage).value,
                                          "resume": command})
    if tracker is not None:
        tracker.finish(failed=True, error=f"interrupted; resume with: {command}",
                       status="interrupted", exit_code=130)
