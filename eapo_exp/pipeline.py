"""Runs one job: validates the config, then each stage up to `cfg.stage`, reusing cached
artifacts, and writes `config_resolved.yaml` and `metrics.json` into the job's output dir."""

from __future__ import annotations

import json
import logging
import random
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from eapo_exp.cache import ArtifactCache
from eapo_exp.config import Stage
from eapo_exp.errors import EapoError
from eapo_exp.report.tables import format_metric_table
from eapo_exp.validation import validate_config

log = logging.getLogger(__name__)

STAGE_ORDER = [Stage.data, Stage.expert, Stage.sft, Stage.preference, Stage.all]


def reaches(target: Stage, stage: Stage) -> bool:
    """True when a job asked to run up to `target` must run `stage`."""
    return STAGE_ORDER.index(target) >= STAGE_ORDER.index(stage)


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


def run_stages(cfg: DictConfig) -> dict:
    from eapo_exp.stages.data_stage import prepare_samples

    stage = Stage(cfg.stage)
    cache = ArtifactCache(Path(cfg.paths.artifact_cache).resolve())
    metrics: dict = {"stage": stage.value, "timings": {}}

    started = time.perf_counter()
    samples = prepare_samples(cfg.dataset, cache)
    metrics["timings"]["data_s"] = round(time.perf_counter() - started, 2)
    metrics["data"] = samples.stats
    metrics["data"]["fingerprint"] = samples.fingerprint

    if reaches(stage, Stage.expert):
        from eapo_exp.stages.expert_stage import run_expert_stage

        started = time.perf_counter()
        metrics.update(run_expert_stage(cfg.expert, samples, cache, cfg.dataset.history_len))
        metrics["timings"]["expert_s"] = round(time.perf_counter() - started, 2)
        rows = {cfg.expert.name: metrics["expert"], "popularity": metrics["popularity"]}
        for split in ("valid", "test"):
            table = format_metric_table({name: r[split] for name, r in rows.items()
                                         if split in r}, title=f"{cfg.dataset.name} {split}")
            print(table)
    return metrics


def run_job(cfg: DictConfig) -> float | None:
    out = output_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    is_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        validate_config(cfg)
        seed_everything(cfg.seed)
        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        started = time.perf_counter()
        metrics = run_stages(cfg)
        metrics["timings"]["total_s"] = round(time.perf_counter() - started, 2)
        metrics["status"] = "ok"
        write_json(out / "metrics.json", metrics)
        log.info("wrote %s", out / "metrics.json")
        return None
    except Exception as error:  # noqa: BLE001 - recorded, then reported or re-raised
        failure = {"status": "failed", "error": f"{type(error).__name__}: {error}",
                   "stage": str(cfg.stage)}
        write_json(out / "metrics.json", failure)
        (out / "error.txt").write_text(traceback.format_exc())
        if is_sweep:  # one failed job must not end the sweep; the report lists it
            log.error("job failed: %s (traceback in %s)", failure["error"], out / "error.txt")
            return None
        if isinstance(error, EapoError):
            print(f"eapo-exp: error: {error}", file=sys.stderr)
            sys.exit(2)
        raise
