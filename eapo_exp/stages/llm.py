"""Backbone and prompt builder for a job: shared by the SFT, preference and evaluation stages."""

from __future__ import annotations

import logging

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from eapo_exp.backbones import hybrid_items
from eapo_exp.backbones.base import LoadedBackbone, contiguous_head_input
from eapo_exp.backbones.compile import compile_decoder_layers, compile_wanted
from eapo_exp.backbones.lora import apply_lora
from eapo_exp.data.prompts import TEMPLATES, PromptBuilder
from eapo_exp.data.schema import SampleSet
from eapo_exp.errors import ConfigError

log = logging.getLogger(__name__)


LARGE_ON_CPU = 2_000_000_000  # parameters


def load_backbone(backbone_cfg: DictConfig, samples: SampleSet,
                  device: torch.device | str | None = None) -> LoadedBackbone:
    """The backbone on `device` (the runtime's: every forward runs there)."""
    loader = instantiate(backbone_cfg.loader)
    # Only the tiny backbone uses the corpus (to train its tokenizer).
    corpus = [t for t in samples.catalog.titles[1:] if t] + list(TEMPLATES.values())
    loaded = loader.load(corpus)
    if device is not None:
        loaded.model.to(device)  # a no-op for loaders that placed it there already
    parameters = sum(p.numel() for p in loaded.model.parameters())
    if loaded.model.device.type == "cpu" and parameters > LARGE_ON_CPU:
        log.warning("%s has %.1fB parameters and runs on the CPU (no CUDA device visible): "
                    "every forward will be slow", loaded.name, parameters / 1e9)
    contiguous_head_input(loaded.model)
    if compile_wanted(backbone_cfg.compile.enabled, loaded.model.device):
        compile_decoder_layers(loaded.model, backbone_cfg.compile.cache_dir)
    return loaded


def attach_lora(model, lora_cfg: DictConfig, seed: int):
    """A fresh LoRA adapter on `model`, shaped by the backbone's `lora` config node. Its
    initial weights come from `seed` alone, not from what the process drew before (which
    depends on what the cache already held). A hybrid-item model's projector is trained
    and saved with the adapter."""
    extra = list(lora_cfg.modules_to_save)
    if hybrid_items.find_projector(model) is not None:
        extra = hybrid_items.modules_to_save(extra)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return apply_lora(model, r=lora_cfg.r, alpha=lora_cfg.alpha, dropout=lora_cfg.dropout,
                          target_modules=list(lora_cfg.target_modules), modules_to_save=extra,
                          compute_dtype=lora_cfg.compute_dtype)


def longest_completion(samples: SampleSet, tokenizer) -> int:
    titles = [t for t in samples.catalog.titles[1:] if t]
    lengths = tokenizer(titles, add_special_tokens=False)["input_ids"]
    return max(len(ids) for ids in lengths) + 1  # + EOS


def make_prompt_builder(prompt_cfg: DictConfig, loaded: LoadedBackbone,
                        samples: SampleSet) -> PromptBuilder:
    templates = list(prompt_cfg.train_templates)
    # The prompt plus the longest candidate title must fit the model's context.
    budget = min(prompt_cfg.max_prompt_tokens,
                 loaded.max_context - longest_completion(samples, loaded.tokenizer))
    return PromptBuilder(loaded.tokenizer, item_noun=samples.item_noun,
                         train_templates="all" if templates == ["all"] else templates,
                         eval_template=prompt_cfg.eval_template, max_prompt_tokens=budget,
                         seed=prompt_cfg.seed, chat_template=prompt_cfg.chat_template,
                         item_repr=prompt_cfg.item_repr)


def check_item_repr(model, builder: PromptBuilder, adapter) -> None:
    """Hybrid prompts need a model whose adapter carries the item projector (an SFT model
    trained with prompt.item_repr=hybrid), and such a model needs hybrid prompts."""
    has_projector = hybrid_items.find_projector(model) is not None
    if builder.item_repr == "hybrid" and not has_projector:
        raise ConfigError(f"prompt.item_repr=hybrid but the adapter {adapter} has no item "
                          "projector: it was trained on text-only prompts")
    if builder.item_repr != "hybrid" and has_projector:
        raise ConfigError(f"the adapter {adapter} was trained with hybrid item prompts "
                          "(LLaRA); set prompt.item_repr=hybrid")


def prompt_spec(prompt_cfg: DictConfig) -> dict:
    """What a prompt config changes in an artifact: the hybrid-only keys count only when
    items are hybrid; the item expert counts through the SFT spec's expert."""
    spec = OmegaConf.to_container(prompt_cfg, resolve=True)
    spec.pop("item_expert_data_fraction", None)
    if spec.get("item_repr", "title") == "title":
        spec.pop("item_repr", None)
        spec.pop("curriculum", None)
    return spec


def backbone_spec(backbone_cfg: DictConfig) -> dict:
    spec = OmegaConf.to_container(backbone_cfg, resolve=True)
    # Where converted weights and compiled kernels live is irrelevant.
    spec["loader"].pop("cache_dir", None)
    spec.get("compile", {}).pop("cache_dir", None)
    return spec
