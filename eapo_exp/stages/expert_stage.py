"""Stage `expert`: train (or reuse) the frozen sequential expert and evaluate it."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from eapo_exp.cache import ArtifactCache, fingerprint, reading
from eapo_exp.data.schema import SampleSet
from eapo_exp.distributed import Runtime, default_runtime
from eapo_exp.errors import ConfigError
from eapo_exp.experts import PopularityRanker
from eapo_exp.experts.training import (
    evaluate_scorer,
    load_expert,
    load_metrics,
    save_expert,
    train_expert,
)
from eapo_exp.training.settings import expert_training

log = logging.getLogger(__name__)

EXPERT_FORMAT_VERSION = 1
EVAL_SPLITS = ("valid", "test", "test_user_cold", "test_item_cold")


def expert_spec(expert_cfg: DictConfig, samples: SampleSet) -> dict:
    expert = OmegaConf.to_container(expert_cfg, resolve=True)
    expert.pop("train_if_missing", None)  # how to get it, not what it is
    return {"format": EXPERT_FORMAT_VERSION, "samples": samples.fingerprint, "expert": expert}


def prepare_expert(expert_cfg: DictConfig, samples: SampleSet, cache: ArtifactCache,
                   history_len: int, runtime: Runtime | None = None) -> tuple[object, Path]:
    """Return the trained expert (eval mode, on the runtime's device) and its artifact
    directory. The main process trains it; the others load it."""
    runtime = runtime or default_runtime()
    spec = expert_spec(expert_cfg, samples)
    if not expert_cfg.train_if_missing and not cache.exists("experts", fingerprint(spec)):
        raise ConfigError(f"expert.train_if_missing=false but no trained {expert_cfg.name} expert "
                          f"is cached under {cache.path('experts', fingerprint(spec))}")

    def build(directory: Path) -> None:
        torch.manual_seed(expert_cfg.seed)  # initial weights are part of the artifact
        model = instantiate(expert_cfg.model, num_items=samples.catalog.num_items)
        log.info("training expert %s (%d parameters)", expert_cfg.name,
                 sum(p.numel() for p in model.parameters()))
        info = train_expert(model, samples.split("train"), samples.split("valid"),
                            history_len=history_len, settings=expert_training(expert_cfg),
                            device=runtime.device)
        save_expert(model, directory, info, spec)

    path = cache.get_or_build("experts", spec, build, runtime)
    with reading(path):
        return load_expert(path, map_location=runtime.device), path


def evaluate_on_splits(scorer, samples: SampleSet, history_len: int) -> dict:
    results = {}
    for name in EVAL_SPLITS:
        if name in samples.splits and len(samples.splits[name]) > 0:
            results[name] = evaluate_scorer(scorer, samples.split(name), history_len)
    return results


def run_expert_stage(expert_cfg: DictConfig, samples: SampleSet, cache: ArtifactCache,
                     history_len: int, runtime: Runtime | None = None) -> dict:
    expert, path = prepare_expert(expert_cfg, samples, cache, history_len, runtime)
    with reading(path):
        training = load_metrics(path)
    popularity = PopularityRanker(samples.catalog.num_items)
    popularity.fit(samples.split("train"))
    return {
        "expert": {"name": expert_cfg.name, "artifact": str(path), "training": training,
                   **evaluate_on_splits(expert, samples, history_len)},
        "popularity": evaluate_on_splits(popularity, samples, history_len),
    }
