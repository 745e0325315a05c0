"""The SFT loss of a causal LM: mean negative log-likelihood of the response tokens.

Labels follow the Hugging Face convention: ``labels`` is aligned with ``input_ids`` and holds
IGNORE_INDEX (−100) on every position that is not part of the response (prompt, padding).
With ``shift=True`` (the default) the logits at position t predict the label at t + 1, as
in a causal LM's own loss; pass ``shift=False`` when the labels are already shifted.
Logits may be in any float dtype: the log-softmax runs in float32 a block of rows at a time
(eapo_exp.losses.logprobs), never on a float32 copy of the whole [B, T, V] tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor

from eapo_exp.losses.logprobs import token_logprobs

IGNORE_INDEX = -100


def _align(logits: Tensor, labels: Tensor, shift: bool) -> tuple[Tensor, Tensor]:
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} "
                         "disagree on [B, T]")
    if shift:
        return logits[:, :-1, :], labels[:, 1:]
    return logits, labels


def response_nll(logits: Tensor, labels: Tensor, *, shift: bool = True) -> Tensor:
    """Mean cross entropy over every response token of the batch (labels != −100).

    Returns 0 (with a graph) when the batch has no response token.
    """
    logits, labels = _align(logits, labels, shift)
    mask = labels != IGNORE_INDEX
    positions = torch.arange(labels.shape[1], device=labels.device).expand_as(labels)
    logp = token_logprobs(logits, positions, labels.masked_fill(~mask, 0)) * mask
    return -logp.sum() / mask.sum().clamp(min=1).to(logp.dtype)
