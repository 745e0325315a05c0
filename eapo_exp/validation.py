"""Startup checks, before any data or training: keys against the structured-config schemas,
values that need more than a type (ranges, modes, split names)."""

from __future__ import annotations

import dataclasses
import difflib

from omegaconf import DictConfig, OmegaConf

from eapo_exp.backbones.compile import compile_setting
from eapo_exp.data.samples import validate_sample_params
from eapo_exp.errors import ConfigError
from eapo_exp.training.settings import validate_expert_training


def validate_config(cfg: DictConfig) -> None:
    check_schema_keys(cfg)
    ds = cfg.dataset
    validate_sample_params(k_core=ds.k_core, history_len=ds.history_len,
                           min_history=ds.min_history, num_negatives=ds.num_negatives,
                           split_ratios=ds.split_ratios)
    validate_expert_training(cfg.expert)
    validate_eval(cfg.eval)
    validate_logger(cfg.logger)
    validate_prompt(cfg.prompt)
    compile_setting(cfg.backbone.compile.enabled)

    from eapo_exp.config import Stage

    stage = Stage(cfg.stage)
    if cfg.prompt.item_repr == "hybrid" and (stage is Stage.chatrec
                                             or not cfg.train.sft.enabled):
        raise ConfigError("prompt.item_repr=hybrid needs SFT (train.sft.enabled=true): the "
                          "item projector is trained there; zero-shot and ChatRec prompts "
                          "are text only")
    if stage in (Stage.sft, Stage.preference, Stage.all):
        from eapo_exp.stages.sft_stage import validate_sft

        validate_sft(cfg.train.sft)
    if stage in (Stage.preference, Stage.all):
        from eapo_exp.stages.preference_stage import validate_preference

        validate_preference(cfg)
    if stage is Stage.chatrec:
        validate_chatrec(cfg.chatrec)


def check_schema_keys(node: DictConfig, prefix: str = "") -> None:
    """Reject keys that a node's schema (eapo_exp/config.py) does not declare: Hydra's `+key=`
    adds them past its struct check, and they would silently change fingerprints."""
    schema = OmegaConf.get_type(node)
    known = ({f.name for f in dataclasses.fields(schema)}
             if dataclasses.is_dataclass(schema) else None)
    for key in node:
        name = f"{prefix}{key}"
        if known is not None and key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else ""
            raise ConfigError(f"unknown config key {name} ({schema.__name__} has no field "
                              f"{key!r}){hint}")
        if OmegaConf.is_missing(node, key) or OmegaConf.is_interpolation(node, key):
            continue
        child = node[key]
        if isinstance(child, DictConfig):
            check_schema_keys(child, f"{name}.")


def validate_eval(eval_cfg: DictConfig) -> None:
    from eapo_exp.data.schema import COLD_START_SPLITS, SPLITS
    from eapo_exp.evaluation.modes import build_mode

    build_mode(eval_cfg.mode)  # a registered mode whose constructor takes its arguments
    known = (*SPLITS, *COLD_START_SPLITS)
    unknown = [split for split in eval_cfg.splits if split not in known]
    if unknown:
        raise ConfigError(f"eval.splits names {', '.join(map(repr, unknown))}; every dataset "
                          f"has exactly these splits: {', '.join(known)}")


def validate_logger(logger_cfg: DictConfig) -> None:
    from eapo_exp.tracking import WANDB_MODES

    if logger_cfg.name not in ("none", "wandb"):
        raise ConfigError(f"logger.name must be none or wandb; got {logger_cfg.name!r}")
    if logger_cfg.mode is not None and logger_cfg.mode not in WANDB_MODES:
        raise ConfigError(f"logger.mode must be one of {', '.join(WANDB_MODES)}; "
                          f"got {logger_cfg.mode!r}")


def validate_prompt(prompt_cfg: DictConfig) -> None:
    from eapo_exp.data.curriculum import HybridCurriculum
    from eapo_exp.data.prompts import CHAT_TEMPLATE_MODES, ITEM_REPRS

    if prompt_cfg.chat_template not in CHAT_TEMPLATE_MODES:
        raise ConfigError(f"prompt.chat_template must be one of {', '.join(CHAT_TEMPLATE_MODES)}; "
                          f"got {prompt_cfg.chat_template!r}")
    if prompt_cfg.item_repr not in ITEM_REPRS:
        raise ConfigError(f"prompt.item_repr must be one of {', '.join(ITEM_REPRS)}; "
                          f"got {prompt_cfg.item_repr!r}")
    HybridCurriculum(**prompt_cfg.curriculum)  # range checks
    fraction = prompt_cfg.item_expert_data_fraction
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ConfigError(f"prompt.item_expert_data_fraction must be in (0, 1] or null; "
                          f"got {fraction!r}")


def validate_chatrec(chatrec_cfg: DictConfig) -> None:
    from eapo_exp.chatrec.endpoint import check_endpoint_config

    check_endpoint_config(chatrec_cfg.base_url, chatrec_cfg.model, chatrec_cfg.api_key_env)
    for key, low in (("temperature", 0.0), ("max_tokens", 1), ("concurrency", 1),
                     ("retries", 0)):
        if chatrec_cfg[key] < low:
            raise ConfigError(f"chatrec.{key} must be >= {low}, got {chatrec_cfg[key]}")
    if chatrec_cfg.timeout <= 0:
        raise ConfigError(f"chatrec.timeout must be > 0 seconds, got {chatrec_cfg.timeout}")
