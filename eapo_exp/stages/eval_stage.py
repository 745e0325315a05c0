"""Evaluation: rank each split's candidate lists with a (possibly adapted) backbone."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from eapo_exp.backbones.lora import load_adapter
from eapo_exp.data.schema import SampleSet
from eapo_exp.errors import ConfigError
from eapo_exp.evaluation.analysis import error_analysis
from eapo_exp.evaluation.ranking import rank_candidates
from eapo_exp.experts.training import score_candidates
from eapo_exp.stages.llm import load_backbone, make_prompt_builder
from eapo_exp.training.batches import subset_indices

log = logging.getLogger(__name__)


def evaluation_rows(samples: SampleSet, split: str, eval_cfg: DictConfig):
    if split not in samples.splits:
        raise ConfigError(f"eval.splits names {split!r}, which this dataset does not have; "
                          f"available: {sorted(samples.splits)}")
    data = samples.split(split)
    return data.select(subset_indices(len(data), eval_cfg.max_samples, eval_cfg.subset_seed))


def evaluate_model(model, builder, samples: SampleSet, eval_cfg: DictConfig, out_dir: Path,
                   label: str, expert=None, history_len: int = 10) -> dict:
    """Metrics per split; with an expert, also the error analysis of each split under
    results[split]["analysis"]."""
    results = {}
    for split in eval_cfg.splits:
        rows = evaluation_rows(samples, split, eval_cfg)
        if len(rows) == 0:
            log.warning("split %s is empty; skipped", split)
            continue
        log.info("evaluating %s on %s (%d samples, mode=%s)", label, split, len(rows),
                 eval_cfg.mode)
        metrics, predictions = rank_candidates(
            model, builder, rows, samples.catalog, mode=eval_cfg.mode,
            batch_size=eval_cfg.batch_size, length_normalize=eval_cfg.length_normalize,
            beam_width=eval_cfg.beam_width, max_new_tokens=eval_cfg.max_new_tokens, split=split)
        results[split] = metrics
        if expert is not None:
            scores = score_candidates(expert, rows["history"], rows["candidates"], history_len)
            metrics["analysis"] = error_analysis(predictions, list(rows), scores,
                                                 k=eval_cfg.high_preference_k)
        if eval_cfg.write_predictions:
            path = out_dir / f"predictions_{label}_{split}.jsonl"
            with open(path, "w") as handle:
                handle.writelines(json.dumps(row, default=float) + "\n" for row in predictions)
    return results


def evaluate_adapter(cfg: DictConfig, samples: SampleSet, adapter: Path | None, out_dir: Path,
                     label: str, expert=None) -> dict:
    loaded = load_backbone(cfg.backbone, samples)
    model = load_adapter(loaded.model, adapter) if adapter is not None else loaded.model
    builder = make_prompt_builder(cfg.prompt, loaded, samples)
    return evaluate_model(model, builder, samples, cfg.eval, out_dir, label, expert,
                          cfg.dataset.history_len)
