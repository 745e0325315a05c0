"""Backbones: a causal LM + tokenizer (tiny random-init, packaged SmolLM2, any HF model), LoRA.

Hydra builds the loaders from `_target_: eapo_exp.backbones.<Class>`; each has `load(corpus)`
returning a `LoadedBackbone`. transformers / peft are imported only when a loader runs.
"""

from eapo_exp.backbones.base import (
    Backbone,
    LoadedBackbone,
    checkpointing_enabled,
    contiguous_head_input,
    count_parameters,
    enable_checkpointing,
)
from eapo_exp.backbones.dtype import resolve_dtype
from eapo_exp.backbones.hf import HFBackbone
from eapo_exp.backbones.lora import apply_lora, load_adapter, save_adapter
from eapo_exp.backbones.smollm2 import SmolLM2Backbone
from eapo_exp.backbones.tiny import TinyBackbone

__all__ = [
    "Backbone",
    "HFBackbone",
    "LoadedBackbone",
    "SmolLM2Backbone",
    "TinyBackbone",
    "apply_lora",
    "checkpointing_enabled",
    "contiguous_head_input",
    "count_parameters",
    "enable_checkpointing",
    "load_adapter",
    "resolve_dtype",
    "save_adapter",
]
