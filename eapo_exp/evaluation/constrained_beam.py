"""Beam search constrained to a sample's candidate titles (the paper's ranking protocol).

The search runs over a prefix trie of the candidates' completion ids (title tokens + EOS):
a hypothesis is a trie node, it can only be extended by a token that continues some
candidate, and it finishes when it reaches the end of a candidate. Hypotheses are scored by
the summed log-prob of their tokens under the model's full-vocabulary next-token
distribution (as with `prefix_allowed_tokens_fn` in Hugging Face's beam search, without a
length penalty), and the top `beam_width` finished hypotheses form the top-k list.

Every next-token log-prob the search can ever ask for, log p(t | prompt + trie prefix), is a
token log-prob of some candidate completion. We therefore get all of them from ONE
shared-prefix forward pass per sample (`completion_token_logprobs`) and then run the beam
search exactly on the trie, with no incremental decoding: same hypotheses, same scores as
step-by-step decoding with a KV cache, and the result can only ever be a candidate title.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from eapo_exp.training.shared_prefix import completion_token_logprobs


@dataclass(frozen=True)
class Hypothesis:
    """A finished beam: the candidate positions sharing these exact ids, and its log-prob."""

    candidates: tuple[int, ...]
    score: float
    token_ids: tuple[int, ...]


class CandidateTrie:
    """Prefix trie over completion id sequences. Nodes are id tuples (the root is ())."""

    def __init__(self, completion_ids: Sequence[Sequence[int]]) -> None:
        # children[node][token] = (k, j): candidate k has `token` at position j after `node`
        self.children: dict[tuple[int, ...], dict[int, tuple[int, int]]] = {}
        self.leaves: dict[tuple[int, ...], list[int]] = {}
        for k, ids in enumerate(completion_ids):
            ids = tuple(int(t) for t in ids)
            if not ids:
                raise ValueError(f"candidate {k} has an empty completion")
            for j, token in enumerate(ids):
                self.children.setdefault(ids[:j], {}).setdefault(token, (k, j))
            self.leaves.setdefault(ids, []).append(k)


def beam_search_trie(
    completion_ids: Sequence[Sequence[int]],
    token_logprobs,
    beam_width: int = 5,
) -> list[Hypothesis]:
    """Constrained beam search given log p(token j of candidate k | prompt + its prefix).

    token_logprobs: indexable as [k][j] (tensor, array or nested lists). Returns up to
    beam_width finished hypotheses, best first (ties keep trie insertion order).
    """
    if beam_width < 1:
        raise ValueError(f"beam_width must be >= 1, got {beam_width}")
    trie = CandidateTrie(completion_ids)
    if isinstance(token_logprobs, torch.Tensor):
        token_logprobs = token_logprobs.detach().float().cpu().tolist()
    live: list[tuple[float, tuple[int, ...]]] = [(0.0, ())]
    finished: list[tuple[float, tuple[int, ...]]] = []
    while live:
        expansions = []
        for score, node in live:
            for token, (k, j) in trie.children.get(node, {}).items():
                expansions.append((score + float(token_logprobs[k][j]), node + (token,)))
        expansions.sort(key=lambda e: -e[0])  # stable
        live = []
        for rank, (score, node) in enumerate(expansions):
            if node in trie.leaves and rank < beam_width:
                finished.append((score, node))
            if node in trie.children and len(live) < beam_width:
                live.append((score, node))
            if len(live) >= beam_width and rank >= beam_width - 1:
                break
        finished.sort(key=lambda e: -e[0])
        # Log-probs only decrease along a path: once beam_width finished hypotheses beat the
        # best live one, nothing can enter the top list any more.
        if len(finished) >= beam_width and (
            not live or max(s for s, _ in live) <= finished[beam_width - 1][0]
        ):
            break
    return [
        Hypothesis(tuple(trie.leaves[node]), score, node)
        for score, node in finished[:beam_width]
    ]


def ranked_candidates(hypotheses: Sequence[Hypothesis], target_index: int | None = None,
                      limit: int | None = None) -> list[int]:
    """Candidate positions in beam order. Candidates with identical ids (duplicate titles)
    share a hypothesis; the target is placed last among them (pessimistic, like ties)."""
    order: list[int] = []
    for hyp in hypotheses:
        group = [k for k in hyp.candidates if k != target_index]
        if target_index in hyp.candidates:
            group.append(target_index)
        order.extend(group)
    return order[:limit] if limit is not None else order


@torch.no_grad()
def constrained_beam_search(
    model,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[Sequence[int]]],
    pad_id: int,
    beam_width: int = 5,
) -> list[list[Hypothesis]]:
    """Top-beam_width candidates of each prompt by constrained beam search (one forward)."""
    token_lp, _ = completion_token_logprobs(model, prompts, completions, pad_id)
    token_lp = token_lp.float().cpu()
    return [
        beam_search_trie(comps, token_lp[b], beam_width)
        for b, comps in enumerate(completions)
    ]
