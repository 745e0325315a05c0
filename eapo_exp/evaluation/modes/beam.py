"""Beam mode (the paper's protocol): beam search of width beam_width constrained to the
candidate titles; the finished beams form the ranked list and a target outside it is a miss."""

from __future__ import annotations

from collections.abc import Sequence

from eapo_exp.data.prompts import PromptBuilder, PromptExample
from eapo_exp.errors import ConfigError
from eapo_exp.evaluation.constrained_beam import constrained_beam_search, ranked_candidates
from eapo_exp.evaluation.metrics import rank_in_list
from eapo_exp.evaluation.modes.base import EvalMode, Ranking


class BeamMode(EvalMode):
    name = "beam"

    def __init__(self, beam_width: int = 5) -> None:
        if isinstance(beam_width, bool) or not isinstance(beam_width, int) or beam_width < 1:
            raise ConfigError(f"eval.mode.beam_width must be an integer >= 1, got {beam_width!r}")
        self.beam_width = beam_width

    def rank_batch(self, model, builder: PromptBuilder, examples: Sequence[PromptExample],
                   pad_id: int) -> list[Ranking]:
        hyps = constrained_beam_search(
            model, [e.prompt_ids for e in examples], [e.completion_ids for e in examples],
            pad_id, beam_width=self.beam_width,
        )
        rankings = []
        for example, sample_hyps in zip(examples, hyps):
            order = ranked_candidates(sample_hyps, example.target_index, limit=self.beam_width)
            rankings.append(Ranking(
                order=order, target_rank=rank_in_list(order, example.target_index),
                fields={"beam_scores": [round(h.score, 5) for h in sample_hyps]}))
        return rankings

    def settings(self) -> dict:
        return {"beam_width": self.beam_width}
