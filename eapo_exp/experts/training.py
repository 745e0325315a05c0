"""Train, evaluate, score with, save and load experts.

Training is the next-item objective: full softmax cross-entropy over every item id
(padding excluded) from `full_logits`, Adam, early stopping on validation NDCG@5 over each
sample's candidate list. Scoring works for any object with `.score(histories, candidates)`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from eapo_exp.config import ExpertTrainingConfig
from eapo_exp.evaluation.metrics import metrics_from_ranks, target_ranks
from eapo_exp.experts.base import SequentialExpert, pad_histories
from eapo_exp.training.settings import validate_expert_training

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
EXPERT_FILE = "expert.json"
METRICS_FILE = "metrics.json"
SELECTION_METRIC = "ndcg@5"


# --------------------------------------------------------------------------- tensors

def _columns(split, names: Sequence[str]) -> dict[str, list]:
    """Columns of a `datasets.Dataset`, a dict of columns, or a list of sample dicts."""
    if isinstance(split, Mapping):
        return {name: list(split[name]) for name in names}
    if hasattr(split, "select_columns"):
        return split.select_columns(list(names))[:]
    return {name: [row[name] for row in split] for name in names}


def _pad_candidates(candidates: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, C_max] LongTensor padded with 0 plus a bool mask of real entries."""
    lengths = [len(c) for c in candidates]
    width = max(lengths, default=0)
    if width == 0:
        raise ValueError("no candidates to score")
    if min(lengths) == width:
        out = torch.as_tensor(np.asarray(candidates, dtype=np.int64).reshape(len(lengths), width))
        return out, torch.ones_like(out, dtype=torch.bool)
    out = torch.zeros(len(candidates), width, dtype=torch.long)
    for row, items in enumerate(candidates):
        out[row, :len(items)] = torch.as_tensor(list(items), dtype=torch.long)
    mask = torch.arange(width).unsqueeze(0) < torch.as_tensor(lengths).unsqueeze(1)
    return out, mask


def _eval_tensors(split, history_len: int) -> dict[str, torch.Tensor]:
    cols = _columns(split, ("history", "target", "candidates"))
    candidates, mask = _pad_candidates(cols["candidates"])
    targets = torch.as_tensor(cols["target"], dtype=torch.long)
    hit = (candidates == targets.unsqueeze(1)) & mask
    if not bool(hit.any(1).all()):
        bad = int((~hit.any(1)).nonzero()[0, 0])
        raise ValueError(f"sample {bad}: target {int(targets[bad])} is not among its candidates")
    return {"histories": pad_histories(cols["history"], history_len), "candidates": candidates,
            "mask": mask, "target_positions": hit.float().argmax(1)}


def _device_of(scorer) -> torch.device:
    if isinstance(scorer, nn.Module):
        for tensor in (*scorer.parameters(), *scorer.buffers()):
            return tensor.device
    return torch.device("cpu")


def _score_tensors(scorer, histories: torch.Tensor, candidates: torch.Tensor,
                   mask: torch.Tensor, batch_size: int) -> np.ndarray:
    device = _device_of(scorer)
    was_training = scorer.training if isinstance(scorer, nn.Module) else None
    if was_training is not None:
        scorer.eval()
    try:
        chunks = []
        with torch.no_grad():
            for start in range(0, len(histories), batch_size):
                h = histories[start:start + batch_size].to(device)
                c = candidates[start:start + batch_size].to(device)
                chunks.append(scorer.score(h, c).float().cpu())
    finally:
        if was_training:
            scorer.train()
    if not chunks:
        return np.zeros((0, candidates.shape[1]), dtype=np.float32)
    scores = torch.cat(chunks).masked_fill(~mask, float("-inf"))
    return scores.numpy()


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


# --------------------------------------------------------------------------- public scoring

def score_candidates(scorer, histories: Sequence[Sequence[int]],
                     candidates: Sequence[Sequence[int]], history_len: int,
                     batch_size: int = 1024) -> np.ndarray:
    """Scores float32 [N, C] of each row's candidates (higher = preferred), in eval mode.

    Histories are item-id lists, oldest first (left-padded / cropped to `history_len`).
    Rows with fewer candidates than the widest row are filled with -inf on the right.
    """
    _check_batch_size(batch_size)
    if len(histories) != len(candidates):
        raise ValueError(f"{len(histories)} histories but {len(candidates)} candidate lists")
    if not len(histories):
        return np.zeros((0, 0), dtype=np.float32)
    cands, mask = _pad_candidates(candidates)
    return _score_tensors(scorer, pad_histories(histories, history_len), cands, mask, batch_size)


def evaluate_scorer(scorer, split, history_len: int, batch_size: int = 1024) -> dict[str, float]:
    """HR@1, HR@5, NDCG@5 and n of ranking each sample's candidates (ties pessimistic)."""
    _check_batch_size(batch_size)
    tensors = _eval_tensors(split, history_len)
    return _evaluate_tensors(scorer, tensors, batch_size)


def _evaluate_tensors(scorer, tensors: dict[str, torch.Tensor], batch_size: int) -> dict:
    scores = _score_tensors(scorer, tensors["histories"], tensors["candidates"],
                            tensors["mask"], batch_size)
    ranks = target_ranks(scores, tensors["target_positions"].numpy())
    return metrics_from_ranks(ranks, ks=(1, 5))


# --------------------------------------------------------------------------- training

def subsample_indices(num_samples: int, data_fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded `data_fraction` of `num_samples` (at least one)."""
    try:
        fraction = float(data_fraction)
    except (TypeError, ValueError):
        fraction = math.nan
    if not 0.0 < fraction <= 1.0:  # also rejects NaN
        raise ValueError(f"data_fraction must be in (0, 1], got {data_fraction!r}")
    data_fraction = fraction
    if data_fraction == 1.0:
        return np.arange(num_samples)
    keep = max(1, round(data_fraction * num_samples))
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(num_samples)[:keep])


def train_expert(model: SequentialExpert, train, valid, *, history_len: int,
                 settings: ExpertTrainingConfig | None = None, eval_every: int = 1,
                 progress: bool = True,
                 device: str | torch.device | None = None) -> dict[str, Any]:
    """Train `model` in place on next-item prediction; restore the best-validation state.

    settings: lr, batch size, epochs, early stopping, data fraction and seed (None: the
    schema's defaults, eapo_exp.config.ExpertTrainingConfig); out-of-range values raise
    ConfigError naming the `expert.<key>`. Validation NDCG@5 over each valid sample's
    candidates is computed every `eval_every` epochs (and after the last one); training stops
    after `patience` evaluations without an improvement larger than `min_delta`. Returns
    best_epoch, epochs_run, train_seconds, train_samples_used, valid (metrics of the restored
    model: hr@1, hr@5, ndcg@5, n) and history (one row per evaluation: epoch, loss, metrics).

    The model's initial weights are the caller's: seed torch before building it. The
    settings' seed drives the data subset, shuffling and dropout.
    """
    settings = settings or ExpertTrainingConfig()
    validate_expert_training(settings)
    if not isinstance(model, SequentialExpert):
        raise TypeError(f"train_expert trains SequentialExpert models, got {type(model).__name__}")
    for name, value in (("eval_every", eval_every), ("history_len", history_len)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    batch_size, max_epochs, seed = settings.batch_size, settings.max_epochs, settings.seed
    indices = subsample_indices(len(train), settings.data_fraction, seed)
    if device is not None:
        model.to(device)
    device = _device_of(model)

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    cols = _columns(train, ("history", "target"))
    histories = pad_histories([cols["history"][i] for i in indices], history_len)
    targets = torch.as_tensor([cols["target"][i] for i in indices], dtype=torch.long)
    if len(targets) and (int(targets.min()) < 1 or int(targets.max()) > model.num_items):
        raise ValueError(f"training targets must be item ids in 1..{model.num_items}")
    if len(histories) and int(histories.max()) > model.num_items:
        raise ValueError(f"training histories hold item ids above {model.num_items}")
    histories, targets = histories.to(device), targets.to(device)
    valid_tensors = _eval_tensors(valid, history_len)
    eval_batch = max(batch_size, 1024)

    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr,
                                 weight_decay=settings.weight_decay)
    num_samples = len(targets)
    num_batches = math.ceil(num_samples / batch_size)
    best_score, best_epoch, best_state, best_metrics = -math.inf, 0, None, {}
    evals_since_best, epochs_run, history = 0, 0, []
    started = time.perf_counter()
    epochs = tqdm(range(1, max_epochs + 1), desc=f"train {type(model).__name__}",
                  disable=not progress, unit="epoch")
    for epoch in epochs:
        model.train()
        order = torch.randperm(num_samples, generator=generator).to(device)
        total_loss = 0.0
        batches = tqdm(range(num_batches), desc=f"epoch {epoch}", leave=False,
                       disable=not progress, unit="batch")
        for b in batches:
            idx = order[b * batch_size:(b + 1) * batch_size]
            loss = F.cross_entropy(model.full_logits(histories[idx]), targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(idx)
        epochs_run = epoch
        mean_loss = total_loss / max(num_samples, 1)
        if epoch % eval_every and epoch != max_epochs:
            epochs.set_postfix(loss=f"{mean_loss:.4f}")
            continue
        metrics = _evaluate_tensors(model, valid_tensors, eval_batch)
        history.append({"epoch": epoch, "loss": mean_loss, **metrics})
        epochs.set_postfix(loss=f"{mean_loss:.4f}", **{"valid ndcg@5": f"{metrics['ndcg@5']:.4f}"})
        log.debug("epoch %d loss %.4f valid %s", epoch, mean_loss, metrics)
        if metrics[SELECTION_METRIC] > best_score + settings.min_delta:
            best_score, best_epoch, best_metrics = metrics[SELECTION_METRIC], epoch, metrics
            best_state = copy.deepcopy(model.state_dict())
            evals_since_best = 0
        else:
            evals_since_best += 1
            if evals_since_best >= settings.patience:
                break
    epochs.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {"best_epoch": best_epoch, "epochs_run": epochs_run,
            "train_seconds": time.perf_counter() - started,
            "train_samples_used": int(num_samples), "valid": dict(best_metrics),
            "history": history}


# --------------------------------------------------------------------------- persistence

def _json_ready(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (Path, torch.device)):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def save_expert(model: nn.Module, directory: str | os.PathLike, metrics: Mapping[str, Any],
                spec: Mapping[str, Any] | None = None) -> Path:
    """Write model.pt (state dict), expert.json (class + constructor kwargs + spec) and
    metrics.json into `directory` (created if missing). Returns the directory."""
    init_kwargs = getattr(model, "init_kwargs", None)
    if init_kwargs is None:
        raise TypeError(f"{type(model).__name__} has no init_kwargs; cannot be rebuilt on load")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, directory / MODEL_FILE)
    description = {"class": type(model).__name__, "kwargs": _json_ready(init_kwargs),
                   "spec": _json_ready(dict(spec or {}))}
    (directory / EXPERT_FILE).write_text(json.dumps(description, indent=2, sort_keys=True))
    (directory / METRICS_FILE).write_text(
        json.dumps(_json_ready(dict(metrics)), indent=2, sort_keys=True))
    return directory


def load_expert(directory: str | os.PathLike,
                map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a saved expert (in eval mode) from its directory alone."""
    from eapo_exp.experts import EXPERT_CLASSES

    directory = Path(directory)
    try:
        description = json.loads((directory / EXPERT_FILE).read_text())
    except FileNotFoundError as err:
        raise FileNotFoundError(f"no saved expert in {directory} (missing {EXPERT_FILE})") from err
    name = description["class"]
    if name not in EXPERT_CLASSES:
        raise ValueError(f"{directory / EXPERT_FILE}: unknown expert class {name!r}; "
                         f"known: {sorted(EXPERT_CLASSES)}")
    model = EXPERT_CLASSES[name](**description["kwargs"])
    state = torch.load(directory / MODEL_FILE, map_location=map_location, weights_only=True)
    model.load_state_dict(state)
    model.to(map_location)
    return model.eval()


def load_metrics(directory: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(directory) / METRICS_FILE).read_text())


__all__ = ["evaluate_scorer", "load_expert", "load_metrics", "save_expert",
           "score_candidates", "subsample_indices", "train_expert"]
