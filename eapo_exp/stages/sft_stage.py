"""Stage `sft`: LoRA supervised fine-tuning on the target title (or none for zero-shot)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from eapo_exp.backbones.lora import save_adapter
from eapo_exp.cache import ArtifactCache, reading
from eapo_exp.data.schema import SampleSet
from eapo_exp.distributed import Runtime, default_runtime
from eapo_exp.errors import ConfigError
from eapo_exp.stages.llm import attach_lora, backbone_spec, load_backbone, make_prompt_builder
from eapo_exp.training.batches import subset_indices
from eapo_exp.training.loop import LoopSettings, check_split
from eapo_exp.training.sft import SFTBatches, train_sft

log = logging.getLogger(__name__)

SFT_FORMAT_VERSION = 1


def validate_sft(sft_cfg: DictConfig, num_processes: int = 1) -> None:
    for key in ("batch_size", "grad_accum", "lr", "checkpoint_every", "log_every"):
        if sft_cfg[key] <= 0:
            raise ConfigError(f"train.sft.{key} must be > 0, got {sft_cfg[key]}")
    check_split("train.sft.grad_accum", sft_cfg.grad_accum, num_processes)
    if sft_cfg.max_steps <= 0 and sft_cfg.epochs <= 0:
        raise ConfigError("train.sft needs epochs > 0 or max_steps > 0")


def sft_spec(cfg: DictConfig, samples: SampleSet) -> dict:
    return {"format": SFT_FORMAT_VERSION, "samples": samples.fingerprint,
            "backbone": backbone_spec(cfg.backbone),
            "prompt": OmegaConf.to_container(cfg.prompt, resolve=True),
            "sft": OmegaConf.to_container(cfg.train.sft, resolve=True)}


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

    def build(directory: Path) -> None:
        loaded = load_backbone(cfg.backbone, samples, runtime.device)
        model = attach_lora(loaded.model, cfg.backbone.lora, sft_cfg.seed)
        builder = make_prompt_builder(cfg.prompt, loaded, samples)
        train = samples.split("train")
        indices = subset_indices(len(train), sft_cfg.max_train_samples, sft_cfg.seed)
        rows = [dict(r) for r in train.select(indices)]
        batches = SFTBatches(rows, samples.catalog, builder, sft_cfg.batch_size,
                             sft_cfg.grad_accum, sft_cfg.seed, loaded.tokenizer.pad_token_id)
        total = (sft_cfg.max_steps if sft_cfg.max_steps > 0
                 else batches.schedule.steps_for(sft_cfg.epochs, sft_cfg.grad_accum))
        settings = LoopSettings(total_steps=total, seed=sft_cfg.seed,
                                grad_accum=sft_cfg.grad_accum, lr=sft_cfg.lr,
                                weight_decay=sft_cfg.weight_decay,
                                warmup_ratio=sft_cfg.warmup_ratio, schedule="cosine",
                                max_grad_norm=sft_cfg.max_grad_norm,
                                checkpoint_every=sft_cfg.checkpoint_every,
                                log_every=sft_cfg.log_every,
                                dead_gradient_steps=sft_cfg.dead_gradient_steps)
        log.info("SFT: %d training prompts, %d steps of %d x %d", len(rows), total,
                 sft_cfg.batch_size, sft_cfg.grad_accum)
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
