"""Stage `data`: raw source -> cached next-item samples with candidate lists. Data whose
train, valid or test split comes out empty fails here, with the counts, and is not cached."""

from __future__ import annotations

import logging

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from eapo_exp.cache import ArtifactCache
from eapo_exp.data.samples import build_samples, require_samples
from eapo_exp.data.schema import SampleSet
from eapo_exp.data.store import cached_samples, samples_spec

log = logging.getLogger(__name__)

SAMPLE_PARAM_KEYS = ("k_core", "history_len", "min_history", "num_negatives", "split_ratios",
                     "sample_seed")


def sample_params(dataset_cfg: DictConfig) -> dict:
    return {key: OmegaConf.to_container(dataset_cfg[key], resolve=True)
            if OmegaConf.is_config(dataset_cfg[key]) else dataset_cfg[key]
            for key in SAMPLE_PARAM_KEYS}


def prepare_samples(dataset_cfg: DictConfig, cache: ArtifactCache, runtime=None) -> SampleSet:
    params = sample_params(dataset_cfg)
    source_spec = OmegaConf.to_container(dataset_cfg.source, resolve=True)
    spec = samples_spec(source_spec, {**params, "item_noun": dataset_cfg.item_noun})

    def build() -> SampleSet:
        source = instantiate(dataset_cfg.source)
        data = source.load()
        return build_samples(data, item_noun=dataset_cfg.item_noun, k_core=params["k_core"],
                             history_len=params["history_len"],
                             min_history=params["min_history"],
                             num_negatives=params["num_negatives"],
                             split_ratios=params["split_ratios"], seed=params["sample_seed"])

    samples = cached_samples(cache, spec, build, runtime)
    # build_samples rejects empty splits; this catches samples cached before it did.
    require_samples(samples.stats, min_history=params["min_history"],
                    num_negatives=params["num_negatives"])
    log_data_stats(dataset_cfg.name, samples.stats)
    return samples


def log_data_stats(name: str, stats: dict) -> None:
    log.info("%s: %d users, %d items, %d interactions (sparsity %.4f)", name, stats["users"],
             stats["items"], stats["interactions"], stats["sparsity"])
    log.info("samples per split: %s", stats["samples"])
    log.info("mean history length: %s",
             {k: round(v, 2) for k, v in stats["mean_history_length"].items()})
    log.info("dropped: %d untitled items (%d interactions), %d by k-core, short history %s, "
             "too few negatives %d", stats["dropped_untitled_items"],
             stats["dropped_untitled_interactions"], stats["dropped_by_k_core"],
             stats["dropped_short_history"], stats["dropped_too_few_negatives"])
