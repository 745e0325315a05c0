"""The one normalisation of item titles in prompts and completions.

Surrounding whitespace is stripped and inner runs of whitespace fold to one space, so a title
has one form, and one set of token ids, in SFT targets, preference completions, evaluation
candidates and ChatRec's prompt. (Matching generated text to candidates normalises further:
eapo_exp.evaluation.generate.normalize_title.)
"""

from __future__ import annotations

from eapo_exp.errors import DataError


def clean_title(title: str) -> str:
    clean = " ".join(title.split()) if isinstance(title, str) else ""
    if not clean:
        raise DataError(f"empty item title {title!r}: every item needs a non-empty title")
    return clean
