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

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from eapo_exp.data.templates import TEMPLATE_NAMES, TEMPLATES, plural
from eapo_exp.data.titles import clean_title
from eapo_exp.errors import ConfigError, DataError

ANSWER_CUE = "\nAnswer:\n"
CHAT_TEMPLATE_MODES = ("off", "auto", "on")
ITEM_REPRS = ("title", "hybrid")
# In rendered text an item's embedding slot is \0<item id>\0 (never in a title); tokenization
# turns it into the slot's token id (eapo_exp.backbones.hybrid_items.slot_id).
_SLOT = re.compile("\x00([0-9]+)\x00")
EMPTY_HISTORY = "(none yet)"



def format_titles(titles: Sequence[str], items: Sequence[int] | None = None) -> str:
    """Titles in double quotes, comma separated (titles themselves often contain commas).
    With `items`, each title is followed by its item's embedding slot (LLaRA's hybrid form)."""
    if items is None:
        return ", ".join(f'"{t}"' for t in titles)
    return ", ".join(f'"{t}"\x00{int(i)}\x00' for t, i in zip(titles, items, strict=True))


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
    item_repr: "title" (items are their titles) or "hybrid" (LLaRA: each title in the history
        and the candidate list is followed by one slot holding the item's projected expert
        embedding; completions stay titles). Examples built with `hybrid=False` are text-only
        (LLaRA's curriculum mixes both during SFT).
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
        item_repr: str = "title",
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
        if item_repr not in ITEM_REPRS:
            raise ConfigError(f"prompt.item_repr must be one of {', '.join(ITEM_REPRS)}; "
                              f"got {item_repr!r}")
        self.item_repr = item_repr
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
        if "\x00" not in text:
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        from eapo_exp.backbones.hybrid_items import slot_id

        ids: list[int] = []
        pieces = _SLOT.split(text)  # text, item, text, item, ..., text
        for position, piece in enumerate(pieces):
            if position % 2:
                ids.append(slot_id(int(piece)))
            elif piece:
                ids.extend(self.tokenizer(piece, add_special_tokens=False)["input_ids"])
        return ids

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
        """Completion ids of a title (clean_title's form): its tokens (no special tokens)
        followed by EOS."""
        clean = clean_title(title)
        ids = self._title_cache.get(clean)
        if ids is None:
            ids = self._encode(clean) + [self.eos_id]
            self._title_cache[clean] = ids
        return list(ids)

    def render(self, history_titles: Sequence[str], candidate_titles: Sequence[str],
               template_name: str, history_items: Sequence[int] | None = None,
               candidate_items: Sequence[int] | None = None) -> str:
        """The prompt text, ending with the answer cue (plain) or the assistant header of the
        tokenizer's chat template (its special tokens written out as text). With item ids,
        every title is followed by its embedding slot."""
        template = TEMPLATES[self._check_name(template_name)]
        history = (format_titles(history_titles, history_items) if len(history_titles)
                   else EMPTY_HISTORY)
        body = template.format(
            noun=self.item_noun, nouns=self.item_noun_plural,
            history=history, candidates=format_titles(candidate_titles, candidate_items),
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
        history_items: Sequence[int] | None = None,
        candidate_items: Sequence[int] | None = None,
    ) -> PromptExample:
        """Tokenize one example; drops the oldest history titles if the prompt is too long.
        Item ids (both or neither, aligned with the titles) put an embedding slot after each
        title."""
        self._check_name(template_name)
        if (history_items is None) != (candidate_items is None):
            raise ValueError("pass both history_items and candidate_items, or neither")
        history = [clean_title(t) for t in history_titles]
        candidates = [clean_title(t) for t in candidate_titles]
        if not candidates:
            raise DataError("a prompt needs at least one candidate title")
        completion_ids = [self.title_ids(t) for t in candidates]
        target_ids = target_index = None
        if target_title is not None:
            target = clean_title(target_title)
            target_ids = self.title_ids(target)
            if target in candidates:
                target_index = candidates.index(target)

        def ids_for(drop: int) -> tuple[str, list[int]]:
            items = None if history_items is None else list(history_items)[drop:]
            text = self.render(history[drop:], candidates, template_name, items,
                               candidate_items)
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
                     epoch: int = 0, with_target: bool = True,
                     hybrid: bool | None = None) -> PromptExample:
        """Build from a sample row (item ids; see eapo_exp.data.schema) and its catalog.
        `hybrid` (default: item_repr == "hybrid") puts embedding slots after the titles."""
        template = self.template_for(sample_key, split, epoch)
        history_items = [int(i) for i in sample["history"] if int(i) != 0]
        candidate_items = [int(i) for i in sample["candidates"]]
        history = [catalog.title(i) for i in history_items]
        candidates = [catalog.title(i) for i in candidate_items]
        target = catalog.title(int(sample["target"])) if with_target else None
        if not (self.item_repr == "hybrid" if hybrid is None else hybrid):
            history_items = candidate_items = None
        example = self.build(history, candidates, target, template, history_items,
                             candidate_items)
        if with_target:
            # Locate the target by item id (titles may repeat across items).
            cands = [int(i) for i in sample["candidates"]]
            if int(sample["target"]) in cands:
                example.target_index = cands.index(int(sample["target"]))
        return example

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
            clean = clean_title(title)
            decoded = self.tokenizer.decode(self.title_ids(clean)[:-1], skip_special_tokens=True)
            if " ".join(decoded.split()) != clean:
                bad.append(clean)
        return bad
