"""Instruction templates and the prompt builder shared by SFT, preference training and evaluation.

A prompt is plain text (no chat template): one of the instruction templates below, filled with
the user's history titles and the candidate titles, followed by the fixed answer cue
``ANSWER_CUE``. The completion of a prompt is an item title followed by the tokenizer's EOS.

Prompt and completion are tokenized separately and their ids concatenated. The answer cue ends
in a newline so that, for byte-level BPE (GPT-2/Llama-3/SmolLM2 style) and whitespace
pre-tokenizers, a title tokenized on its own gives the same ids as when it follows the prompt
in one string: the newline is always its own pre-token, and the title starts a fresh word
without a leading space. `PromptBuilder.check_consistency` verifies this for a tokenizer.

Templates are drawn per example with a seeded RNG (LLaRA/EAPO multi-template sampling), so
the draw depends only on (seed, split, epoch, sample key), never on iteration order.

With a chat template (`chat_template="auto"` when the tokenizer has one, `"on"` to require
one) the filled template is the user message of the tokenizer's own chat template, the
prompt ends with its assistant header (`add_generation_prompt`) instead of the answer cue,
and the template's text carries its special tokens (no tokenizer prefix is added). The
completion is still title + EOS: an instruct tokenizer's EOS is its end-of-turn token.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from eapo_exp.errors import ConfigError, DataError

ANSWER_CUE = "\nAnswer:\n"
CHAT_TEMPLATE_MODES = ("off", "auto", "on")
EMPTY_HISTORY = "(none yet)"

# Slots: {noun} singular item noun, {nouns} plural, {history} the user's titles oldest first,
# {candidates} the candidate titles in sample order. Every template uses every slot.
TEMPLATES: dict[str, str] = {
    "chronological": (
        "Here are the {nouns} a user engaged with, from oldest to most recent: {history}.\n"
        "Based on this history, which one of the following {nouns} will the user choose next? "
        "Options: {candidates}.\n"
        "Reply with the title of exactly one {noun} from the options."
    ),
    "next_pick": (
        "A person's recent {nouns}, in order: {history}.\n"
        "Pick the {noun} they are most likely to go for next from this list: {candidates}."
    ),
    "assistant": (
        "You are a recommendation assistant. The user's past {nouns} are: {history}.\n"
        "Recommend one {noun} for them from these candidates: {candidates}. "
        "Give only its title."
    ),
    "candidates_first": (
        "Candidate {nouns}: {candidates}.\n"
        "The user previously enjoyed these {nouns}: {history}.\n"
        "Which candidate {noun} should be recommended to them next?"
    ),
    "profile": (
        "User profile, built from the {nouns} they interacted with: {history}.\n"
        "Select the {noun} that best matches this profile among: {candidates}."
    ),
    "question": (
        "Someone liked the following {nouns}: {history}. "
        "Which {noun} from {candidates} would they most likely pick next?"
    ),
    "task_format": (
        "Task: next-{noun} recommendation.\n"
        "History of {nouns}: {history}\n"
        "Candidate {nouns}: {candidates}\n"
        "Output the title of the single most suitable candidate."
    ),
    "continue_sequence": (
        "The sequence of {nouns} below reflects one user's taste over time: {history}.\n"
        "Continue the sequence with one {noun} chosen from {candidates}."
    ),
    "shortlist": (
        "From the shortlist of {nouns} {candidates}, choose the {noun} that fits best "
        "after this user's history: {history}."
    ),
    "friend": (
        "A friend asks you for a {noun} suggestion. They have already tried these {nouns}: "
        "{history}. You may only suggest one of: {candidates}. Which {noun} do you suggest?"
    ),
    "interaction_log": (
        "Consider a user whose interaction log contains the following {nouns}: {history}.\n"
        "Among the candidate {nouns} {candidates}, name the {noun} the user is most likely "
        "to interact with next."
    ),
    "minimal": (
        "Past {nouns}: {history}\n"
        "Candidate {nouns}: {candidates}\n"
        "Which {noun} comes next?"
    ),
}

TEMPLATE_NAMES: tuple[str, ...] = tuple(TEMPLATES)


def plural(noun: str) -> str:
    """Naive English plural for an item noun (movie -> movies, category -> categories)."""
    if noun.endswith("y") and len(noun) > 1 and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    return noun + "s"


def format_titles(titles: Sequence[str]) -> str:
    """Titles in double quotes, comma separated (titles themselves often contain commas)."""
    return ", ".join(f'"{t}"' for t in titles)


@dataclass
class PromptExample:
    """One tokenized prompt with the completions of all its candidates.

    completion_ids[k] are the title tokens of candidate k followed by EOS; target_ids likewise
    for the target title (None when no target was given); target_index is the position of the
    target among the candidates (None when absent or not given).
    """

    prompt_ids: list[int]
    completion_ids: list[list[int]]
    target_ids: list[int] | None
    target_index: int | None
    prompt_text: str
    dropped_history: int
    template: str
    candidate_titles: list[str]


class PromptBuilder:
    """Fills templates, tokenizes prompts and completions, and truncates long histories.

    tokenizer: a Hugging Face tokenizer with an EOS token.
    train_templates: "all" or a list of template names drawn from during training.
    eval_template: "fixed:<name>" (always that template) or "random" (drawn per sample from
        the training templates, seeded like training).
    max_prompt_tokens: the prompt (not the completion) must fit; the oldest history titles are
        dropped first until it does. Candidates are never cut.
    """

    def __init__(
        self,
        tokenizer,
        item_noun: str = "item",
        train_templates: str | Sequence[str] = "all",
        eval_template: str = "random",
        max_prompt_tokens: int = 1024,
        seed: int = 0,
        item_noun_plural: str | None = None,
        chat_template: str = "off",
    ) -> None:
        if not item_noun or not item_noun.strip():
            raise ConfigError("item_noun must be a non-empty word such as 'movie'")
        if max_prompt_tokens <= 0:
            raise ConfigError(f"max_prompt_tokens must be positive, got {max_prompt_tokens}")
        self.tokenizer = tokenizer
        self.item_noun = item_noun.strip()
        self.item_noun_plural = (item_noun_plural or plural(self.item_noun)).strip()
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.seed = int(seed)

        if isinstance(train_templates, str):
            if train_templates != "all":
                train_templates = [train_templates]
            else:
                train_templates = list(TEMPLATE_NAMES)
        train_templates = list(train_templates)
        if not train_templates:
            raise ConfigError("train_templates is empty; use 'all' or a list of template names")
        for name in train_templates:
            self._check_name(name)
        self.train_templates = train_templates

        if eval_template == "random":
            self.eval_fixed: str | None = None
        elif isinstance(eval_template, str) and eval_template.startswith("fixed:"):
            self.eval_fixed = self._check_name(eval_template[len("fixed:"):])
        else:
            raise ConfigError(
                f"eval_template must be 'random' or 'fixed:<name>', got {eval_template!r}; "
                f"valid names: {', '.join(TEMPLATE_NAMES)}"
            )
        self.eval_template = eval_template

        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None:
            raise ConfigError("the tokenizer has no eos_token_id; completions end with EOS")
        self.eos_id = int(eos)
        self.uses_chat_template = self._uses_chat_template(tokenizer, chat_template)
        self._prefix_ids = self._special_prefix()
        self._title_cache: dict[str, list[int]] = {}
        self.stats = {"examples": 0, "truncated_examples": 0, "dropped_history_items": 0}

    # ------------------------------------------------------------------ templates
    @staticmethod
    def _uses_chat_template(tokenizer, mode: str) -> bool:
        if mode not in CHAT_TEMPLATE_MODES:
            raise ConfigError(f"chat_template must be one of {', '.join(CHAT_TEMPLATE_MODES)}; "
                              f"got {mode!r}")
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if mode == "on" and not has_template:
            raise ConfigError("prompt.chat_template=on but the tokenizer has no chat template; "
                              "use auto (plain prompts without one) or off")
        return has_template and mode != "off"

    @staticmethod
    def _check_name(name: str) -> str:
        if name not in TEMPLATES:
            raise ConfigError(
                f"unknown prompt template {name!r}; valid names: {', '.join(TEMPLATE_NAMES)}"
            )
        return name

    def template_for(self, sample_key: int, split: str, epoch: int = 0) -> str:
        """The template of one sample: deterministic in (seed, split, epoch, sample_key).

        Training splits draw from train_templates; other splits use the fixed eval template
        or draw from train_templates when eval_template is 'random'. Pass a different epoch to
        redraw templates each training epoch.
        """
        if split != "train" and self.eval_fixed is not None:
            return self.eval_fixed
        rng = np.random.default_rng(
            [self.seed, zlib.crc32(split.encode()), int(epoch), int(sample_key)]
        )
        return self.train_templates[int(rng.integers(len(self.train_templates)))]

    # ------------------------------------------------------------------ tokenization
    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _special_prefix(self) -> list[int]:
        """Special tokens the tokenizer itself puts before text (e.g. Llama's BOS), if any."""
        probe = "a"
        bare = self._encode(probe)
        full = list(self.tokenizer(probe, add_special_tokens=True)["input_ids"])
        for start in range(len(full) - len(bare) + 1):
            if full[start:start + len(bare)] == bare:
                return [t for t in full[:start] if t != self.eos_id]
        return []

    def title_ids(self, title: str) -> list[int]:
        """Completion ids of a title: its tokens (no special tokens) followed by EOS."""
        clean = title.strip() if isinstance(title, str) else ""
        if not clean:
            raise DataError(f"empty item title {title!r}: every item needs a non-empty title")
        ids = self._title_cache.get(clean)
        if ids is None:
            ids = self._encode(clean) + [self.eos_id]
            self._title_cache[clean] = ids
        return list(ids)

    def render(self, history_titles: Sequence[str], candidate_titles: Sequence[str],
               template_name: str) -> str:
        """The prompt text, ending with the answer cue (plain) or the assistant header of the
        tokenizer's chat template (its special tokens written out as text)."""
        template = TEMPLATES[self._check_name(template_name)]
        history = format_titles(history_titles) if len(history_titles) else EMPTY_HISTORY
        body = template.format(
            noun=self.item_noun, nouns=self.item_noun_plural,
            history=history, candidates=format_titles(candidate_titles),
        )
        if self.uses_chat_template:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True)
        return body + ANSWER_CUE

    def _prompt_ids(self, text: str) -> list[int]:
        if self.uses_chat_template:  # the template writes its own BOS, if any
            return self._encode(text)
        return self._prefix_ids + self._encode(text)

    # ------------------------------------------------------------------ building
    def build(
        self,
        history_titles: Sequence[str],
        candidate_titles: Sequence[str],
        target_title: str | None,
        template_name: str,
    ) -> PromptExample:
        """Tokenize one example; drops the oldest history titles if the prompt is too long."""
        self._check_name(template_name)
        history = [self._clean(t) for t in history_titles]
        candidates = [self._clean(t) for t in candidate_titles]
        if not candidates:
            raise DataError("a prompt needs at least one candidate title")
        completion_ids = [self.title_ids(t) for t in candidates]
        target_ids = target_index = None
        if target_title is not None:
            target = self._clean(target_title)
            target_ids = self.title_ids(target)
            if target in candidates:
                target_index = candidates.index(target)

        def ids_for(drop: int) -> tuple[str, list[int]]:
            text = self.render(history[drop:], candidates, template_name)
            return text, self._prompt_ids(text)

        text, ids = ids_for(0)
        dropped = 0
        if len(ids) > self.max_prompt_tokens:
            text_all, ids_all = ids_for(len(history))
            if len(ids_all) > self.max_prompt_tokens:
                raise ConfigError(
                    f"the prompt needs {len(ids_all)} tokens with no history at all (template "
                    f"{template_name!r}, {len(candidates)} candidates) but max_prompt_tokens is "
                    f"{self.max_prompt_tokens}; raise max_prompt_tokens"
                )
            # Smallest number of oldest titles to drop (length shrinks as titles are dropped).
            lo, hi = 1, len(history)
            best = (len(history), text_all, ids_all)
            while lo <= hi:
                mid = (lo + hi) // 2
                t_mid, i_mid = ids_for(mid)
                if len(i_mid) <= self.max_prompt_tokens:
                    best = (mid, t_mid, i_mid)
                    hi = mid - 1
                else:
                    lo = mid + 1
            dropped, text, ids = best
            self.stats["truncated_examples"] += 1
            self.stats["dropped_history_items"] += dropped
        self.stats["examples"] += 1
        return PromptExample(
            prompt_ids=ids, completion_ids=completion_ids, target_ids=target_ids,
            target_index=target_index, prompt_text=text, dropped_history=dropped,
            template=template_name, candidate_titles=candidates,
        )

    def build_sample(self, sample: dict, catalog, split: str, sample_key: int,
                     epoch: int = 0, with_target: bool = True) -> PromptExample:
        """Build from a sample row (item ids; see eapo_exp.data.schema) and its catalog."""
        template = self.template_for(sample_key, split, epoch)
        history = [catalog.title(int(i)) for i in sample["history"] if int(i) != 0]
        candidates = [catalog.title(int(i)) for i in sample["candidates"]]
        target = catalog.title(int(sample["target"])) if with_target else None
        example = self.build(history, candidates, target, template)
        if with_target:
            # Locate the target by item id (titles may repeat across items).
            cands = [int(i) for i in sample["candidates"]]
            if int(sample["target"]) in cands:
                example.target_index = cands.index(int(sample["target"]))
        return example

    @property
    def dropped_history(self) -> int:
        """Total history titles dropped by truncation so far."""
        return self.stats["dropped_history_items"]

    def reset_stats(self) -> None:
        for key in self.stats:
            self.stats[key] = 0

    def check_consistency(self, example: PromptExample) -> bool:
        """True when tokenizing prompt text + each title in one string gives the same ids."""
        for title, ids in zip(example.candidate_titles, example.completion_ids):
            joint = self._prompt_ids(example.prompt_text + title)
            if joint != example.prompt_ids + ids[:-1]:
                return False
        return True

    def roundtrip_failures(self, titles: Sequence[str]) -> list[str]:
        """Titles that do not decode back to themselves from their completion ids.

        Generate-mode evaluation decodes the model's output and matches it to the candidate
        titles, so a tokenizer that fails this for many titles under-reports valid outputs.
        """
        bad = []
        for title in titles:
            clean = self._clean(title)
            decoded = self.tokenizer.decode(self.title_ids(clean)[:-1], skip_special_tokens=True)
            if " ".join(decoded.split()) != clean:
                bad.append(clean)
        return bad

    @staticmethod
    def _clean(title: str) -> str:
        clean = title.strip() if isinstance(title, str) else ""
        if not clean:
            raise DataError(f"empty item title {title!r}: every item needs a non-empty title")
        return " ".join(clean.split())
