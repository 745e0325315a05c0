"""Evaluation: rank each split's candidate lists with a (possibly adapted) backbone."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from eapo_exp.backbones.lora import load_adapter, merge_for_inference
from eapo_exp.cache import ArtifactCache, directory_digest, fingerprint, reading
from eapo_exp.data.schema import SampleSet
from eapo_exp.distributed import Runtime, default_runtime
from eapo_exp.errors import ConfigError
from eapo_exp.evaluation.analysis import error_analysis
from eapo_exp.evaluation.modes import build_mode
from eapo_exp.evaluation.ranking import rank_candidates
from eapo_exp.experts.training import load_expert, score_candidates
from eapo_exp.stages.llm import (
    backbone_spec,
    check_item_repr,
    load_backbone,
    make_prompt_builder,
    prompt_spec,
)
from eapo_exp.training.batches import subset_indices

log = logging.getLogger(__name__)

EVAL_FORMAT_VERSION = 1


def evaluation_rows(samples: SampleSet, split: str, eval_cfg: DictConfig):
    if split not in samples.splits:
        raise ConfigError(f"eval.splits names {split!r}, which this dataset does not have; "
                          f"available: {sorted(samples.splits)}")
    data = samples.split(split)
    return data.select(subset_indices(len(data), eval_cfg.max_samples, eval_cfg.subset_seed))


def evaluate_model(model, builder, samples: SampleSet, eval_cfg: DictConfig, out_dir: Path,
                   expert=None, history_len: int = 10, runtime=None) -> dict:
    """Metrics per split, predictions in out_dir/predictions_<split>.jsonl; with an expert,
    also the error analysis of each split under results[split]["analysis"]. Samples are
    sharded over the runtime's processes; every process gets the whole result."""
    mode = build_mode(eval_cfg.mode)
    results = {}
    for split in eval_cfg.splits:
        rows = evaluation_rows(samples, split, eval_cfg)
        if len(rows) == 0:
            log.warning("split %s is empty; skipped", split)
            continue
        log.info("evaluating on %s (%d samples, mode=%s)", split, len(rows), mode.name)
        metrics, predictions = rank_candidates(
            model, builder, rows, samples.catalog, mode, batch_size=eval_cfg.batch_size,
            split=split, runtime=runtime)
        results[split] = metrics
        if expert is not None:
            scores = score_candidates(expert, rows["history"], rows["candidates"], history_len)
            metrics["analysis"] = error_analysis(predictions, list(rows), scores,
                                                 k=eval_cfg.high_preference_k)
        with open(out_dir / f"predictions_{split}.jsonl", "w") as handle:
            handle.writelines(json.dumps(row, default=float) + "\n" for row in predictions)
    return results


def evaluation_spec(cfg: DictConfig, samples: SampleSet, adapter: Path | None,
                    expert_artifact: Path | None) -> dict:
    """Everything an evaluation's result depends on; the adapter and the expert by the
    bytes they hold (a rebuilt artifact at the same path is a different model)."""
    eval_cfg = OmegaConf.to_container(cfg.eval, resolve=True)
    for key in ("name", "write_predictions", "reuse_cached"):
        eval_cfg.pop(key, None)
    return {"format": EVAL_FORMAT_VERSION, "samples": samples.fingerprint,
            "backbone": backbone_spec(cfg.backbone),
            "prompt": prompt_spec(cfg.prompt), "eval": eval_cfg,
            "history_len": cfg.dataset.history_len,
            "adapter": directory_digest(adapter) if adapter is not None else None,
            "expert": directory_digest(expert_artifact) if expert_artifact else None}


def evaluate_adapter(cfg: DictConfig, samples: SampleSet, adapter: Path | None, out_dir: Path,
                     label: str, cache: ArtifactCache, expert_artifact: Path | None = None,
                     runtime: Runtime | None = None) -> dict:
    """Evaluate the backbone (+ adapter) once per spec: a rerun, or another sweep job that
    evaluates the same cached model, reuses the stored metrics and predictions. Only the
    main process copies predictions into `out_dir`."""
    runtime = runtime or default_runtime()

    def build(directory: Path) -> None:
        loaded = load_backbone(cfg.backbone, samples, runtime.device)
        model = (load_adapter(loaded.model, adapter, compute_dtype=cfg.backbone.lora.compute_dtype)
                 if adapter is not None else loaded.model)
        if adapter is not None and cfg.eval.merge_lora:
            model = merge_for_inference(model)
        builder = make_prompt_builder(cfg.prompt, loaded, samples)
        check_item_repr(model, builder, adapter)
        expert = (load_expert(expert_artifact, map_location=runtime.device)
                  if expert_artifact else None)
        log.info("evaluating %s", label)
        results = evaluate_model(model, builder, samples, cfg.eval, directory, expert,
                                 cfg.dataset.history_len, runtime)
        (directory / "results.json").write_text(json.dumps(results, indent=2, default=float))

    spec = evaluation_spec(cfg, samples, adapter, expert_artifact)
    if not cfg.eval.reuse_cached and runtime.is_main:
        shutil.rmtree(cache.path("evaluations", fingerprint(spec)), ignore_errors=True)
    artifact = cache.get_or_build("evaluations", spec, build, runtime, collective=True)
    if cfg.eval.write_predictions and runtime.is_main:
        for path in sorted(artifact.glob("predictions_*.jsonl")):
            split = path.stem.removeprefix("predictions_")
            shutil.copyfile(path, out_dir / f"predictions_{label}_{split}.jsonl")
    with reading(artifact):
        return json.loads((artifact / "results.json").read_text())
