"""Stage `preference`: cached reference log-probs and expert scores, then preference
optimisation (loss x beta schedule) starting from the SFT adapter."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from eapo_exp.backbones.lora import load_adapter, save_adapter
from eapo_exp.build import build_object
from eapo_exp.cache import ArtifactCache, reading
from eapo_exp.data.schema import SampleSet
from eapo_exp.distributed import Runtime, default_runtime, gather_in_order
from eapo_exp.errors import ConfigError
from eapo_exp.experts.training import load_expert, score_candidates
from eapo_exp.stages.llm import (
    attach_lora,
    backbone_spec,
    check_item_repr,
    load_backbone,
    make_prompt_builder,
    prompt_spec,
)
from eapo_exp.training.batches import subset_indices
from eapo_exp.training.heldout import (
    CHANCE_ACCURACY,
    HELDOUT_SPLIT,
    HeldoutProbe,
    heldout_examples,
)
from eapo_exp.training.preference import PreferenceBatches, train_preference
from eapo_exp.training.preference_data import compute_logps, make_examples
from eapo_exp.training.settings import LoopSettings, validate_loop

log = logging.getLogger(__name__)

PREFERENCE_FORMAT_VERSION = 1


def validate_preference(cfg: DictConfig, num_processes: int = 1) -> None:
    pcfg = cfg.train.preference
    if not 1 <= pcfg.num_rejected <= cfg.dataset.num_negatives:
        raise ConfigError(f"train.preference.num_rejected must be in [1, dataset.num_negatives="
                          f"{cfg.dataset.num_negatives}], got {pcfg.num_rejected}")
    validate_loop(pcfg, "train.preference", num_processes)
    for key in ("heldout_samples", "heldout_every"):
        if pcfg[key] < 0:
            raise ConfigError(f"train.preference.{key} must be >= 0, got {pcfg[key]}")
    if pcfg.reference_batch_size <= 0:
        raise ConfigError(f"train.preference.reference_batch_size must be > 0, got "
                          f"{pcfg.reference_batch_size}")
    build_object(cfg.loss)  # constructors validate their own values (beta > 0, tau > 0, ...)
    schedule = build_object(cfg.beta_schedule)
    if num_processes > 1 and schedule.state_dict():
        raise ConfigError(
            f"beta_schedule={cfg.beta_schedule.name} keeps running batch statistics, which "
            f"each of the {num_processes} processes would update from its own micro-batches "
            "only; run it on one process")


def examples_spec(cfg: DictConfig, samples: SampleSet) -> dict:
    pcfg = cfg.train.preference
    return {"samples": samples.fingerprint, "num_rejected": pcfg.num_rejected,
            "max_train_samples": pcfg.max_train_samples,
            "subset_seed": cfg.dataset.sample_seed}


def load_examples(cfg: DictConfig, samples: SampleSet):
    pcfg = cfg.train.preference
    train = samples.split("train")
    rows = subset_indices(len(train), pcfg.max_train_samples, cfg.dataset.sample_seed)
    return make_examples([dict(r) for r in train.select(rows)], rows, pcfg.num_rejected,
                         cfg.dataset.sample_seed)


def heldout_spec(cfg: DictConfig, samples: SampleSet) -> dict:
    return {"samples": samples.fingerprint, "split": HELDOUT_SPLIT,
            "count": cfg.train.preference.heldout_samples, "seed": cfg.dataset.sample_seed,
            "rejected": "all other candidates"}


def reference_logps(cfg: DictConfig, samples: SampleSet, cache: ArtifactCache,
                    sft_adapter: Path | None, examples, runtime: Runtime,
                    kind: str = "reference_logps", examples_key: dict | None = None,
                    description: str = "reference log-probs") -> dict[str, torch.Tensor]:
    """Log-probs of every example's completions under the frozen reference, sharded over
    the processes and gathered; cached as artifact `kind`, keyed by `examples_key` (default:
    the training examples)."""
    spec = {"format": PREFERENCE_FORMAT_VERSION,
            "examples": examples_key or examples_spec(cfg, samples),
            "reference": str(sft_adapter.parent.name) if sft_adapter else "base",
            "backbone": backbone_spec(cfg.backbone),
            "prompt": prompt_spec(cfg.prompt)}

    def build(directory: Path) -> None:
        loaded = load_backbone(cfg.backbone, samples, runtime.device)
        model = (load_adapter(loaded.model, sft_adapter,
                              compute_dtype=cfg.backbone.lora.compute_dtype)
                 if sft_adapter else loaded.model)
        builder = make_prompt_builder(cfg.prompt, loaded, samples)
        check_item_repr(model, builder, sft_adapter)
        tensors = compute_logps(model, builder, samples.catalog, examples,
                                cfg.train.preference.reference_batch_size,
                                loaded.tokenizer.pad_token_id, description, runtime=runtime)
        torch.save(tensors, directory / "reference.pt")

    path = cache.get_or_build(kind, spec, build, runtime, collective=True)
    with reading(path):
        return torch.load(path / "reference.pt", weights_only=True)


def expert_scores(cfg: DictConfig, samples: SampleSet, cache: ArtifactCache, expert_dir: Path,
                  examples, runtime: Runtime) -> torch.Tensor:
    """The expert's score of every example's [chosen] + rejected items (main process: a
    small sequential model scores them all in a few batches)."""
    spec = {"format": PREFERENCE_FORMAT_VERSION, "examples": examples_spec(cfg, samples),
            "expert": expert_dir.name}

    def build(directory: Path) -> None:
        expert = load_expert(expert_dir, map_location=runtime.device)
        scores = score_candidates(expert, [e.sample["history"] for e in examples],
                                  [e.items for e in examples], cfg.dataset.history_len)
        torch.save(torch.as_tensor(np.asarray(scores), dtype=torch.float32),
                   directory / "scores.pt")

    path = cache.get_or_build("expert_scores", spec, build, runtime)
    with reading(path):
        return torch.load(path / "scores.pt", weights_only=True)


def heldout_reference(cfg: DictConfig, samples: SampleSet, cache: ArtifactCache,
                      sft_adapter: Path | None, runtime: Runtime):
    """(held-out examples, their log-probs under the reference), or None when
    train.preference.heldout_samples is 0."""
    count = cfg.train.preference.heldout_samples
    if count == 0:
        return None
    examples = heldout_examples(samples, count, cfg.dataset.sample_seed)
    logps = reference_logps(cfg, samples, cache, sft_adapter, examples, runtime,
                            kind="heldout_reference", examples_key=heldout_spec(cfg, samples),
                            description="held-out reference log-probs")["logps"]
    return examples, logps


def log_heldout(result: dict, loss: str, schedule: str) -> None:
    after = result["after"]

    def cell(name: str) -> str:
        value = after[name]
        return f"{value['mean']:.3f} [{value['ci_low']:.3f}, {value['ci_high']:.3f}]"

    line = (f"held-out preference ({loss} x {schedule}; {result['samples']} {result['split']} "
            f"samples x {result['negatives']} negatives): reward accuracy "
            f"{cell('reward_accuracy')}, implicit-reward HR@1 {cell('implicit_hr@1')}, "
            f"chosen log-prob change {cell('chosen_logp_change')} nats")
    if result["trained"]:
        log.info("%s", line)
    else:
        log.warning("%s: the stage DID NOT TRAIN (reward accuracy not above %.1f with 95%% "
                    "confidence)", line, CHANCE_ACCURACY)


def final_discrepancy(model, builder, samples: SampleSet, examples, reference, pcfg,
                      pad_id: int, runtime: Runtime) -> np.ndarray:
    """Chosen-minus-rejected log-ratio (r_w - r_l, no beta) of every training pair of the
    first `analysis_samples` examples under the trained policy (paper Fig. 1b, 3)."""
    count = min(len(examples), pcfg.analysis_samples)
    final = compute_logps(model, builder, samples.catalog, examples[:count],
                          pcfg.reference_batch_size, pad_id, "reward discrepancy",
                          runtime=runtime)["logps"]
    ratios = final - reference["logps"][:count] if reference is not None else final
    return (ratios[:, :1] - ratios[:, 1:]).flatten().numpy()


def preference_spec(cfg: DictConfig, samples: SampleSet, sft_adapter: Path | None,
                    expert_dir: Path | None) -> dict:
    """What a trained preference model depends on: the expert only when its β schedule
    reads the expert's scores (a fixed-β model is the same whichever expert ran)."""
    schedule = get_class(cfg.beta_schedule._target_)
    spec = {"format": PREFERENCE_FORMAT_VERSION, "examples": examples_spec(cfg, samples),
            "sft": str(sft_adapter.parent.name) if sft_adapter else "none",
            "backbone": backbone_spec(cfg.backbone),
            "prompt": prompt_spec(cfg.prompt),
            "loss": OmegaConf.to_container(cfg.loss, resolve=True),
            "beta_schedule": OmegaConf.to_container(cfg.beta_schedule, resolve=True),
            "train": OmegaConf.to_container(cfg.train.preference, resolve=True)}
    if schedule.needs_expert_scores:
        spec["expert"] = expert_dir.name if expert_dir else "none"
    if schedule.needs_margins:  # its filter and statistics span each optimizer step's batch
        spec["beta_scope"] = "optimizer_batch"
    return spec


TRAINING_CURVE = "training_curve.jsonl"


def prepare_preference(cfg: DictConfig, samples: SampleSet, cache: ArtifactCache,
                       sft_adapter: Path | None, expert_dir: Path | None,
                       on_log=None, runtime: Runtime | None = None) -> Path:
    """Directory of the trained preference artifact (adapter/, info.json, betas.npy, ...)."""
    runtime = runtime or default_runtime()
    validate_preference(cfg, runtime.num_processes)
    pcfg = cfg.train.preference
    loss = build_object(cfg.loss)
    schedule = build_object(cfg.beta_schedule)
    if schedule.needs_expert_scores and expert_dir is None:
        raise ConfigError(f"beta_schedule={cfg.beta_schedule.name} needs a trained expert")
    spec = preference_spec(cfg, samples, sft_adapter, expert_dir)
    work = cache.work_dir("preference", spec)

    def build(directory: Path) -> None:
        examples = load_examples(cfg, samples)
        reference = (None if loss.reference_free
                     else reference_logps(cfg, samples, cache, sft_adapter, examples, runtime))
        heldout = heldout_reference(cfg, samples, cache, sft_adapter, runtime)
        scores = (expert_scores(cfg, samples, cache, expert_dir, examples, runtime)
                  if schedule.needs_expert_scores else None)
        loaded = load_backbone(cfg.backbone, samples, runtime.device)
        model = (load_adapter(loaded.model, sft_adapter, trainable=True,
                              compute_dtype=cfg.backbone.lora.compute_dtype) if sft_adapter
                 else attach_lora(loaded.model, cfg.backbone.lora, pcfg.seed))
        builder = make_prompt_builder(cfg.prompt, loaded, samples)
        check_item_repr(model, builder, sft_adapter)
        batches = PreferenceBatches(examples, builder, samples.catalog, reference, scores,
                                    pcfg.batch_size, pcfg.grad_accum, pcfg.seed)
        settings = LoopSettings.from_config(pcfg, len(examples))
        log.info("preference (%s x %s): %d prompts x %d rejected, %d steps of %d x %d",
                 cfg.loss.name, cfg.beta_schedule.name, len(examples), pcfg.num_rejected,
                 settings.total_steps, pcfg.batch_size, pcfg.grad_accum)
        curve: list[dict] = []

        def record(step_number: int, values: dict) -> None:
            curve.append({"step": step_number, **values})
            if on_log is not None:
                on_log(step_number, values)

        pad_id = loaded.tokenizer.pad_token_id
        probe = (HeldoutProbe(builder, samples.catalog, *heldout, pcfg.reference_batch_size,
                              pad_id, runtime) if heldout else None)
        info, step = train_preference(model, batches, loss, schedule, pad_id, settings,
                                      work / "checkpoints", on_log=record, runtime=runtime,
                                      probe=probe, probe_every=pcfg.heldout_every)
        if probe is not None:
            if probe.last_step != settings.total_steps:  # resumed after its last step
                probe(model, settings.total_steps)
            info["heldout"] = probe.result()
            if runtime.is_main:
                log_heldout(info["heldout"], cfg.loss.name, cfg.beta_schedule.name)
        # Kept with the artifact so a job that reuses it still has the training curve.
        with open(directory / TRAINING_CURVE, "w") as handle:
            handle.writelines(json.dumps(row, default=float) + "\n" for row in curve)
        save_adapter(model, directory / "adapter")
        np.save(directory / "reward_discrepancy.npy",
                final_discrepancy(model, builder, samples, examples, reference, pcfg,
                                  loaded.tokenizer.pad_token_id, runtime))
        # Pairs seen by every process in global micro-batch order, before a resume too.
        betas = gather_in_order(runtime, step.pair_betas)
        discrepancies = gather_in_order(runtime, step.pair_discrepancies)
        if betas:
            np.save(directory / "train_betas.npy", torch.cat(betas).numpy())
            np.save(directory / "train_discrepancy.npy", torch.cat(discrepancies).numpy())
        info.update({"examples": len(examples), "num_rejected": pcfg.num_rejected})
        (directory / "info.json").write_text(json.dumps(info, indent=2, default=float))

    path = cache.get_or_build("preference", spec, build, runtime, collective=True)
    if runtime.is_main:
        shutil.rmtree(work, ignore_errors=True)
    return path
