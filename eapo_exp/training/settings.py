"""Training settings, built once from their config node and validated by one function each.

LoRA training (train.sft, train.preference; schema eapo_exp.config.LoopConfig) runs in
TrainLoop with LoopSettings; the expert (schema eapo_exp.config.ExpertTrainingConfig) in
eapo_exp.experts.training.train_expert. The defaults live in the schemas only. Startup
validation (eapo_exp.validation) and the stages call the same validate_* functions, so a bad
value fails before any data is read with a message naming its key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from eapo_exp.config import ExpertTrainingConfig, LoopConfig
from eapo_exp.errors import ConfigError

LR_SCHEDULES = ("cosine", "constant")


@dataclass
class LoopSettings:
    """What TrainLoop needs; from_config builds it from a LoopConfig node. The defaults are
    LoopConfig's; `schedule` is cosine unless the node has the key (train.sft has none)."""

    total_steps: int
    seed: int = 0  # the RNG of a fresh run (dropout); a resumed run restores its checkpoint's
    grad_accum: int = LoopConfig.grad_accum
    lr: float = LoopConfig.lr
    weight_decay: float = LoopConfig.weight_decay
    warmup_ratio: float = LoopConfig.warmup_ratio
    schedule: str = "cosine"
    max_grad_norm: float = LoopConfig.max_grad_norm
    checkpoint_every: int = LoopConfig.checkpoint_every
    log_every: int = LoopConfig.log_every
    dead_gradient_steps: int = LoopConfig.dead_gradient_steps

    @classmethod
    def from_config(cls, node, num_samples: int) -> LoopSettings:
        """total_steps is max_steps when > 0, else enough steps of batch_size × grad_accum
        samples for `epochs` passes over num_samples."""
        if node.max_steps > 0:
            total = int(node.max_steps)
        else:
            per_step = node.batch_size * node.grad_accum
            total = max(1, math.ceil(node.epochs * num_samples / per_step))
        given = {f.name: node[f.name] for f in fields(cls)
                 if f.name != "total_steps" and f.name in node}
        return cls(total_steps=total, **given)


def check_split(key: str, grad_accum: int, num_processes: int) -> None:
    """Every process must run the same number of micro-batches per optimizer step."""
    if grad_accum % num_processes:
        raise ConfigError(
            f"{key}={grad_accum} cannot be split evenly over {num_processes} processes: use a "
            f"multiple of {num_processes} (each process runs {key}/{num_processes} micro-batches "
            "per optimizer step, so the global batch is batch_size x grad_accum whatever the "
            "process count)")


def _require(ok: bool, key: str, rule: str, value) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {rule}, got {value!r}")


def validate_loop(node, key: str, num_processes: int = 1) -> None:
    """Range checks of a LoopConfig node (`key` is its path, e.g. train.sft)."""
    for name in ("batch_size", "grad_accum", "lr", "checkpoint_every", "log_every"):
        _require(node[name] > 0, f"{key}.{name}", "> 0", node[name])
    for name in ("weight_decay", "dead_gradient_steps"):
        _require(node[name] >= 0, f"{key}.{name}", ">= 0", node[name])
    _require(0 <= node.warmup_ratio <= 1, f"{key}.warmup_ratio", "in [0, 1]",
             node.warmup_ratio)
    if node.max_steps <= 0 and node.epochs <= 0:
        raise ConfigError(f"{key} needs epochs > 0 or max_steps > 0")
    if "schedule" in node:
        _require(node.schedule in LR_SCHEDULES, f"{key}.schedule",
                 f"one of {', '.join(LR_SCHEDULES)}", node.schedule)
    check_split(f"{key}.grad_accum", node.grad_accum, num_processes)


def expert_training(node) -> ExpertTrainingConfig:
    """The expert's training settings from its config node, validated."""
    settings = ExpertTrainingConfig(**{f.name: node[f.name]
                                       for f in fields(ExpertTrainingConfig)})
    validate_expert_training(settings)
    return settings


def validate_expert_training(settings, key: str = "expert") -> None:
    """Range checks of an ExpertTrainingConfig or of the `expert` config node."""
    for name in ("lr", "batch_size", "max_epochs", "patience"):
        value = getattr(settings, name)
        _require(value > 0, f"{key}.{name}", "> 0", value)
    for name in ("min_delta", "weight_decay"):
        value = getattr(settings, name)
        _require(value >= 0, f"{key}.{name}", ">= 0", value)
    fraction = settings.data_fraction
    _require(0.0 < fraction <= 1.0, f"{key}.data_fraction", "in (0, 1]", fraction)
