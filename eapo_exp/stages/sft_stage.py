"""Stage `sft`: LoRA supervised fine-tuning on the target title (or none for zero-shot)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from eapo_exp.backbones import hybrid_items
from eapo_exp.backbones.lora import save_adapter
from eapo_exp.cache import ArtifactCache, reading
from eapo_exp.data.curriculum import HybridCurriculum
from eapo_exp.data.schema import SampleSet
from eapo_exp.distributed import Runtime, default_runtime
from eapo_exp.stages.expert_stage import expert_spec, prepare_expert
from eapo_exp.stages.llm import (
    attach_lora,
    backbone_spec,
    load_backbone,
    make_prompt_builder,
    prompt_spec,
)
from eapo_exp.training.batches import subset_indices
from eapo_exp.training.settings import LoopSettings, validate_loop
from eapo_exp.training.sft import SFTBatches, train_sft

log = logging.getLogger(__name__)

SFT_FORMAT_VERSION = 1


def validate_sft(sft_cfg: DictConfig, num_processes: int = 1) -> None:
    validate_loop(sft_cfg, "train.sft", num_processes)


def hybrid(cfg: DictConfig) -> bool:
    return cfg.prompt.item_repr == "hybrid"


def sft_spec(cfg: DictConfig, samples: SampleSet) -> dict:
    spec = {"format": SFT_FORMAT_VERSION, "samples": samples.fingerprint,
            "backbone": backbone_spec(cfg.backbone), "prompt": prompt_spec(cfg.prompt),
            "sft": OmegaConf.to_container(cfg.train.sft, resolve=True)}
    if hybrid(cfg):  # the projector reads the expert's item embeddings
        spec["expert"] = expert_spec(item_expert_config(cfg), samples)
    return spec


def item_expert_config(cfg: DictConfig) -> DictConfig:
    """The expert whose item embeddings fill the hybrid slots: `expert`, trained on
    prompt.item_expert_data_fraction of the training data when that is set."""
    fraction = cfg.prompt.get("item_expert_data_fraction")
    if fraction is None:
        return cfg.expert
    expert_cfg = cfg.expert.copy()
    expert_cfg.data_fraction = fraction
    return expert_cfg


def expert_item_table(cfg: DictConfig, samples: SampleSet, cache: ArtifactCache,
                      runtime: Runtime):
    """The trained expert's item embeddings [num_items + 1, d] (LLaRA's item tokens)."""
    expert, _ = prepare_expert(item_expert_config(cfg), samples, cache,
                               cfg.dataset.history_len, runtime)
    return expert.item_embedding.weight.detach().cpu()


def prepare_sft(cfg: DictConfig, samples: SampleSet, cache: ArtifactCache,
                on_log=None, runtime: Runtime | None = None) -> Path | None:
    """Path of the trained SFT adapter (trained now or reused), None for zero-shot.
    With several processes every one of them trains (DDP); the main one saves."""
    sft_cfg = cfg.train.sft
    if not sft_cfg.enabled:
        return None
    runtime = runtime or default_runtime()
    validate_sft(sft_cfg, runtime.num_processes)
    spec = sft_spec(cfg, samples)
    work = cache.work_dir("sft", spec)
    # Before the collective build: the expert is built by the main process alone.
    item_table = expert_item_table(cfg, samples, cache, runtime) if hybrid(cfg) else None

    def build(directory: Path) -> None:
        loaded = load_backbone(cfg.backbone, samples, runtime.device)
        curriculum = None
        if item_table is not None:
            hybrid_items.install(loaded.model, item_table, seed=sft_cfg.seed)
            curriculum = HybridCurriculum(**cfg.prompt.curriculum, seed=sft_cfg.seed)
        model = attach_lora(loaded.model, cfg.backbone.lora, sft_cfg.seed)
        builder = make_prompt_builder(cfg.prompt, loaded, samples)
        train = samples.split("train")
        indices = subset_indices(len(train), sft_cfg.max_train_samples, sft_cfg.seed)
        rows = [dict(r) for r in train.select(indices)]
        settings = LoopSettings.from_config(sft_cfg, len(rows))
        batches = SFTBatches(rows, samples.catalog, builder, sft_cfg.batch_size,
                             sft_cfg.grad_accum, sft_cfg.seed, loaded.tokenizer.pad_token_id,
                             curriculum, settings.total_steps)
        log.info("SFT: %d training prompts, %d steps of %d x %d", len(rows),
                 settings.total_steps, sft_cfg.batch_size, sft_cfg.grad_accum)
        info = train_sft(model, batches, settings, work / "checkpoints", on_log=on_log,
                         runtime=runtime)
        info.update({"train_samples": len(rows), "prompt_stats": dict(builder.stats)})
        save_adapter(model, directory / "adapter")
        (directory / "info.json").write_text(json.dumps(info, indent=2))

    path = cache.get_or_build("sft", spec, build, runtime, collective=True)
    if runtime.is_main:
        shutil.rmtree(work, ignore_errors=True)
    return path / "adapter"


def sft_info(adapter: Path | None) -> dict:
    if adapter is None:
        return {"enabled": False}
    with reading(adapter.parent):
        info = json.loads((adapter.parent / "info.json").read_text())
    return {"enabled": True, "adapter": str(adapter), **info}
