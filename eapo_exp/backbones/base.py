"""What every backbone returns, plus small helpers shared by the loaders."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from eapo_exp.errors import ModelError

if TYPE_CHECKING:  # importing transformers costs seconds; only the loaders need it
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


@dataclass
class LoadedBackbone:
    """A causal LM in eval mode plus its tokenizer.

    The tokenizer has `eos_token_id` and `pad_token_id` set (pad may equal eos) and pads on
    the right. `max_context` is the number of tokens (prompt + completion) the model may see.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    max_context: int

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


@runtime_checkable
class Backbone(Protocol):
    def load(self, corpus: Sequence[str] = ()) -> LoadedBackbone:
        """Load the model. `corpus` (item titles + prompt text) is used only by `tiny`."""
        ...


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, source: str) -> PreTrainedTokenizerBase:
    """Right padding, and a pad token (the eos token when the tokenizer has none)."""
    if tokenizer.eos_token_id is None:
        raise ModelError(f"tokenizer of {source} has no eos token; the completions need one "
                         "to mark their end")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def context_limit(model: PreTrainedModel, requested: int, source: str) -> int:
    """`requested`, capped at what the model's position embeddings cover."""
    if requested <= 0:
        raise ModelError(f"max_context of {source} must be positive, got {requested}")
    limit = getattr(model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and 0 < limit < requested:
        log.warning("%s: max_context %d exceeds the model's %d positions; using %d",
                    source, requested, limit, limit)
        return limit
    return requested


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def checkpointing_enabled(model) -> bool:
    """Whether activation (gradient) checkpointing is on, across transformers 4.x and 5.x."""
    if hasattr(type(model), "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))


def enable_checkpointing(model, use_reentrant: bool = False) -> None:
    """Turn on activation checkpointing (and drop the KV cache, which it cannot use)."""
    kwargs = {"use_reentrant": use_reentrant}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False


def _contiguous_first_input(_module, args):
    return (args[0].contiguous(), *args[1:])


def contiguous_head_input(model) -> None:
    """Make the LM head's input contiguous before it is projected to the vocabulary.

    With `logits_to_keep` the head sees `hidden_states[:, -k:]`, a strided slice, which
    torch's matmul cannot fold into one [B*k, H] mm without a copy; in training it runs a bmm
    against the [V, H] head weight expanded over the batch instead, copying that weight once
    per row (profiled on SmolLM2, 4 x 270 tokens: 0.29 s of copies in a ~2.9 s step on 2
    cores; no-grad evaluation showed no measurable change). A contiguous copy of the small
    slice lets it fold. Same values; registered once.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "_eapo_contiguous_input", False):
        return
    head.register_forward_pre_hook(_contiguous_first_input)
    head._eapo_contiguous_input = True
