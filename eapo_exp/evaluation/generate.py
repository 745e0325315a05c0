"""Free greedy generation matched against the candidate titles (LLaRA / S-DPO protocol)."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

import torch

_TRAILING = string.punctuation.replace(")", "").replace("]", "") + " "


def normalize_title(text: str) -> str:
    """Lowercase, trim, collapse whitespace, drop surrounding quotes and trailing punctuation.

    Closing brackets are kept: titles often end in "(1995)".
    """
    text = " ".join(str(text).lower().split())
    text = text.strip().strip("\"'`")
    text = text.rstrip(_TRAILING)
    return text.strip().strip("\"'`").strip()


def first_line(text: str) -> str:
    """The generated answer: text up to the first newline (a title never spans lines)."""
    return re.split(r"[\r\n]", text.strip(), maxsplit=1)[0] if text.strip() else ""


def match_candidate(generated: str, candidate_titles: Sequence[str]) -> int | None:
    """Index of the first candidate whose normalized title equals the normalized output."""
    norm = normalize_title(first_line(generated))
    if not norm:
        return None
    for k, title in enumerate(candidate_titles):
        if normalize_title(title) == norm:
            return k
    return None


@torch.no_grad()
def greedy_generate(
    model,
    prompts: Sequence[Sequence[int]],
    pad_id: int,
    eos_id: int,
    max_new_tokens: int,
) -> list[list[int]]:
    """Greedy continuation of each prompt (left-padded batch), cut at the first EOS."""
    from transformers import GenerationConfig

    device = model.get_input_embeddings().weight.device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(list(prompt))
        attn[row, width - len(prompt):] = 1
    config = GenerationConfig(
        max_new_tokens=int(max_new_tokens), do_sample=False, num_beams=1,
        pad_token_id=pad_id, eos_token_id=eos_id,
    )
    out = model.generate(
        input_ids=ids.to(device), attention_mask=attn.to(device), generation_config=config,
    )
    results = []
    for row in out[:, width:].tolist():
        if eos_id in row:
            row = row[:row.index(eos_id)]
        results.append(row)
    return results
