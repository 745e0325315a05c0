"""Range checks that need more than a type: run at startup, before any data or training."""

from __future__ import annotations

from omegaconf import DictConfig

from eapo_exp.data.samples import validate_sample_params
from eapo_exp.errors import ConfigError


def validate_config(cfg: DictConfig) -> None:
    ds = cfg.dataset
    validate_sample_params(k_core=ds.k_core, history_len=ds.history_len,
                           min_history=ds.min_history, num_negatives=ds.num_negatives,
                           split_ratios=ds.split_ratios)
    ex = cfg.expert
    if not 0.0 < ex.data_fraction <= 1.0:
        raise ConfigError(f"expert.data_fraction must be in (0, 1], got {ex.data_fraction}")
    for key in ("lr", "batch_size", "max_epochs"):
        if ex[key] <= 0:
            raise ConfigError(f"expert.{key} must be > 0, got {ex[key]}")
    if ex.patience < 1:
        raise ConfigError(f"expert.patience must be >= 1, got {ex.patience}")

    from eapo_exp.config import Stage

    stage = Stage(cfg.stage)
    if stage in (Stage.sft, Stage.preference, Stage.all):
        from eapo_exp.stages.sft_stage import validate_sft

        validate_sft(cfg.train.sft)
    if stage in (Stage.preference, Stage.all):
        from eapo_exp.stages.preference_stage import validate_preference

        validate_preference(cfg)
