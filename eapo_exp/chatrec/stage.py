"""Stage `chatrec`: a chat LLM behind an OpenAI-compatible endpoint ranks each sample's
candidates from one prompt (eapo_exp.chatrec.prompt), on the same samples and splits as
every other method (eval.splits, eval.max_samples, eval.subset_seed).

Metrics per split: HR@1, HR@5, NDCG@5 over all samples (a reply that names no candidate
ranks the target last), ValidRatio (replies that name at least one candidate), HR@1 over
valid replies, the endpoint's prompt and completion token counts, and under `endpoint` the
requests this run sent (replies cached by an earlier run are not sent again).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from eapo_exp.chatrec.endpoint import ChatEndpoint, ChatEndpointError, Reply, display_url
from eapo_exp.chatrec.prompt import build_messages, parse_ranking, ranking_scores
from eapo_exp.data.schema import SampleSet
from eapo_exp.distributed import Runtime, default_runtime
from eapo_exp.errors import DataError, EapoError
from eapo_exp.evaluation.metrics import metrics_from_ranks, target_ranks, valid_output_metrics
from eapo_exp.evaluation.modes import TOP_K
from eapo_exp.methods import METHODS
from eapo_exp.stages.eval_stage import evaluation_rows

log = logging.getLogger(__name__)

LABEL = METHODS["chatrec"].name
HR1_CONVENTION = ("all_samples (a reply that names no candidate ranks the target last); "
                  "hr@1_valid: valid replies only")


def run_chatrec(cfg: DictConfig, samples: SampleSet, out_dir: Path,
                runtime: Runtime | None = None) -> dict:
    """{split: metrics}. The main process sends the requests; every process gets the result."""
    runtime = runtime or default_runtime()
    outcome = None
    if runtime.is_main:
        endpoint = instantiate(cfg.chatrec, reuse_cached=cfg.eval.reuse_cached)
        try:
            write_to = out_dir if cfg.eval.write_predictions else None
            outcome = ("ok", evaluate_chatrec(endpoint, samples, cfg.eval, write_to))
        except EapoError as error:
            outcome = ("error", error)
        finally:
            endpoint.close()
    status, value = runtime.broadcast(outcome)
    if status == "error":
        raise value
    return value


def evaluate_chatrec(endpoint: ChatEndpoint, samples: SampleSet, eval_cfg: DictConfig,
                     out_dir: Path | None = None) -> dict:
    """Metrics per split; predictions in out_dir/predictions_chatrec_<split>.jsonl."""
    results = {}
    for split in eval_cfg.splits:
        rows = [dict(row) for row in evaluation_rows(samples, split, eval_cfg)]
        if not rows:
            log.warning("split %s is empty; skipped", split)
            continue
        log.info("ChatRec on %s: %d samples from %s", split, len(rows), endpoint.where)
        metrics, predictions = rank_with_endpoint(endpoint, rows, samples.catalog,
                                                  samples.item_noun)
        results[split] = metrics
        if out_dir is not None:
            with open(out_dir / f"predictions_{LABEL}_{split}.jsonl", "w") as handle:
                handle.writelines(json.dumps(p, default=float) + "\n" for p in predictions)
    return results


def rank_with_endpoint(endpoint: ChatEndpoint, rows: list[dict], catalog,
                       item_noun: str = "item") -> tuple[dict, list[dict]]:
    """Ask the endpoint once per sample and rank its candidates by the reply."""
    from tqdm.auto import tqdm

    conversations = [
        build_messages([catalog.title(int(i)) for i in row["history"] if int(i) != 0],
                       [catalog.title(int(i)) for i in row["candidates"]], item_noun)
        for row in rows]
    before = endpoint.stats.as_dict()
    started = time.perf_counter()
    with tqdm(total=len(rows), unit="sample", desc="chatrec") as bar:
        replies = endpoint.complete_all(conversations, on_done=lambda: bar.update(1))
    seconds = time.perf_counter() - started
    predictions = [prediction(index, row, reply, catalog)
                   for index, (row, reply) in enumerate(zip(rows, replies))]
    sent = {key: value - before[key] for key, value in endpoint.stats.as_dict().items()}
    metrics = chatrec_metrics(predictions, replies)
    metrics.update(seconds=round(seconds, 3),
                   samples_per_s=round(len(rows) / seconds, 3) if seconds > 0 else 0.0,
                   endpoint={"base_url": display_url(endpoint.base_url), "model": endpoint.model,
                             "temperature": endpoint.temperature,
                             "max_tokens": endpoint.max_tokens, **sent})
    return metrics, predictions


def prediction(index: int, row: dict, reply: Reply, catalog) -> dict:
    """One sample's prediction row (the layout rank_candidates writes, plus the reply)."""
    candidates = [int(i) for i in row["candidates"]]
    target = int(row["target"])
    if target not in candidates:
        raise DataError(f"sample {index}: target {target} is not among its candidates")
    titles = [catalog.title(i) for i in candidates]
    groups = parse_ranking(reply.text, titles)
    scores = ranking_scores(groups, len(candidates))
    rank = target_ranks(scores[None, :], np.array([candidates.index(target)]))[0]
    named = [k for group in groups for k in group]
    return {
        "index": index, "user": row.get("user"), "target": target,
        "target_title": catalog.title(target), "template": LABEL, "dropped_history": 0,
        "ranked_titles": [titles[k] for k in named[:TOP_K]],
        "ranked_items": [candidates[k] for k in named[:TOP_K]],
        "target_rank": int(rank), "valid": bool(groups), "n_ranked": len(named),
        "reply": reply.text, "finish_reason": reply.finish_reason, "cached": reply.cached,
    }


def chatrec_metrics(predictions: list[dict], replies: list[Reply]) -> dict:
    ranks = [p["target_rank"] for p in predictions]
    metrics = metrics_from_ranks(ranks, ks=(1, TOP_K))
    metrics.update(valid_output_metrics(ranks, [p["valid"] for p in predictions]))
    metrics.update(
        mean_ranked=float(np.mean([p["n_ranked"] for p in predictions])),
        prompt_tokens=sum(r.prompt_tokens for r in replies),
        completion_tokens=sum(r.completion_tokens for r in replies),
        truncated_replies=sum(r.finish_reason == "length" for r in replies),
        mode=LABEL, hr1_convention=HR1_CONVENTION)
    return metrics


__all__ = ["ChatEndpointError", "evaluate_chatrec", "rank_with_endpoint", "run_chatrec"]
