"""Experts: small sequential recommenders that, frozen, score candidate items for a history
(EAPO section 3.2). SASRec is the paper's expert; GRU4Rec and Caser are alternatives;
PopularityRanker is the history-blind baseline."""

from __future__ import annotations

import torch

from eapo_exp.experts.base import SequentialExpert, fit_length, pad_histories
from eapo_exp.experts.caser import Caser
from eapo_exp.experts.gru4rec import GRU4Rec
from eapo_exp.experts.popularity import PopularityRanker
from eapo_exp.experts.sasrec import SASRec
from eapo_exp.experts.training import (
    evaluate_scorer,
    load_expert,
    load_metrics,
    save_expert,
    score_candidates,
    subsample_indices,
    train_expert,
)

# class name (as stored in expert.json) -> class, for load_expert
EXPERT_CLASSES: dict[str, type[torch.nn.Module]] = {
    cls.__name__: cls for cls in (SASRec, GRU4Rec, Caser, PopularityRanker)}


__all__ = [
    "EXPERT_CLASSES", "Caser", "GRU4Rec", "PopularityRanker", "SASRec",
    "SequentialExpert", "evaluate_scorer", "fit_length", "load_expert",
    "load_metrics", "pad_histories", "save_expert", "score_candidates", "subsample_indices",
    "train_expert",
]
