"""ChatRec's prompt (the user's history and the candidates as one chat message) and the parser
that turns the reply into a ranking of the candidates.

The parser finds every candidate title the reply names, in the order it names them, after
normalising both sides (eapo_exp.evaluation.generate.normalize_title: case, whitespace,
quotes, trailing punctuation). It reads numbered or bulleted lists, titles inside sentences
and partial answers alike. A title also matches without its trailing "(year)" and with a
trailing article moved to the front ("Usual Suspects, The (1995)" = "The Usual Suspects"),
when no other candidate shares that form. Titles match whole words only, and where two
matches overlap the longer one wins.

Candidates the reply does not name rank after the ones it names, all tied; ties count
against the target (eapo_exp.evaluation.metrics.target_ranks), so a target the reply leaves
out ranks last, as it does for a reply that names no candidate at all (an invalid reply).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from eapo_exp.data.prompts import EMPTY_HISTORY, plural
from eapo_exp.data.titles import clean_title
from eapo_exp.evaluation.generate import normalize_title

PROMPT = (
    "Here are the {nouns} a user interacted with, from oldest to most recent:\n{history}\n\n"
    "Rank the following {count} candidate {nouns} by how likely the user is to choose each "
    "one next, most likely first:\n{candidates}\n\n"
    "Answer with a numbered list of the candidate titles, written exactly as above, one per "
    "line, and nothing else."
)
_ARTICLE = re.compile(r"^(?P<name>.+), (?P<article>the|a|an|les|la|le|il|das|der|die)"
                      r"(?P<rest> \(\d{4}\))?$")
_YEAR = re.compile(r"\s*\(\d{4}\)$")
_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})
MIN_ALIAS_CHARS = 4


def build_messages(history_titles: Sequence[str], candidate_titles: Sequence[str],
                   item_noun: str = "item") -> list[dict]:
    """One user message: the history (oldest first) and the candidates, in sample order."""
    history = "\n".join(f"- {clean_title(t)}" for t in history_titles) or EMPTY_HISTORY
    candidates = "\n".join(f"- {clean_title(t)}" for t in candidate_titles)
    text = PROMPT.format(nouns=plural(item_noun), history=history,
                         candidates=candidates, count=len(candidate_titles))
    return [{"role": "user", "content": text}]


def _normalize_text(text: str) -> str:
    return " ".join(str(text).translate(_QUOTES).lower().split())


def title_forms(title: str) -> list[str]:
    """Normalised forms of one title: itself, article moved to the front, without the year."""
    full = normalize_title(title)
    forms = [full]
    moved = _ARTICLE.match(full)
    if moved:
        forms.append(f"{moved['article']} {moved['name']}{moved['rest'] or ''}")
    for form in list(forms):
        bare = _YEAR.sub("", form)
        if bare != form:
            forms.append(bare)
    return [f for f in dict.fromkeys(forms) if len(f) >= 1]


def _match_keys(candidate_titles: Sequence[str]) -> dict[str, list[int]]:
    """{normalised form: candidate positions}. A candidate's full title always counts (equal
    titles share it, and tie); a shorter form only when no other title has it."""
    owners: dict[str, set[str]] = {}
    positions: dict[str, list[int]] = {}
    for k, title in enumerate(candidate_titles):
        full = normalize_title(title)
        for form in title_forms(title):
            owners.setdefault(form, set()).add(full)
            positions.setdefault(form, []).append(k)
    return {form: positions[form] for form, titles in owners.items()
            if len(titles) == 1 and (form in titles or len(form) >= MIN_ALIAS_CHARS)}


def parse_ranking(reply: str, candidate_titles: Sequence[str]) -> list[list[int]]:
    """Groups of candidate positions in the order the reply names them (a group holds the
    candidates that share one title). Empty when the reply names no candidate."""
    text = _normalize_text(reply or "")
    if not text:
        return []
    found = []  # (start, -length, positions)
    for form, positions in _match_keys(candidate_titles).items():
        pattern = re.compile(r"(?<!\w)" + re.escape(form) + r"(?!\w)")
        found.extend((m.start(), -len(form), positions) for m in pattern.finditer(text))
    groups: list[list[int]] = []
    seen: set[int] = set()
    covered_to = -1
    for start, negative_length, positions in sorted(found):
        if start < covered_to:  # inside a longer match already taken
            continue
        covered_to = start - negative_length
        if positions[0] not in seen:
            seen.update(positions)
            groups.append(list(positions))
    return groups


def ranking_scores(groups: Sequence[Sequence[int]], num_candidates: int) -> np.ndarray:
    """Scores (higher is better) of a parsed ranking: the named candidates in reply order,
    every other candidate tied below them."""
    scores = np.zeros(num_candidates, dtype=np.float64)
    for place, group in enumerate(groups):
        scores[list(group)] = float(len(groups) - place)
    return scores


def ranked_order(scores: np.ndarray) -> list[int]:
    """Candidate positions best first (ties in sample order)."""
    return [int(k) for k in np.argsort(-scores, kind="stable")]
