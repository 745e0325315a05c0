"""Token-level helpers for causal-LM losses: response-only NLL and summed log-probs.

Labels follow the Hugging Face convention: ``labels`` is aligned with ``input_ids`` and holds
IGNORE_INDEX (−100) on every position that is not part of the response (prompt, padding).
With ``shift=True`` (the default) the logits at position t predict the label at t + 1, as
in a causal LM's own loss; pass ``shift=False`` when the labels are already shifted.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

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
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    count = (labels != IGNORE_INDEX).sum()
    return total / count.clamp(min=1).to(total.dtype)


def sequence_logps(logits: Tensor, labels: Tensor, *,
                   shift: bool = True) -> tuple[Tensor, Tensor]:
    """(summed log πθ(response) [B], response token counts [B]) for the preference losses."""
    logits, labels = _align(logits, labels, shift)
    b, t = labels.shape
    token_nll = F.cross_entropy(logits.reshape(b * t, -1).float(), labels.reshape(-1),
                                ignore_index=IGNORE_INDEX, reduction="none").view(b, t)
    return -token_nll.sum(dim=-1), (labels != IGNORE_INDEX).sum(dim=-1)
