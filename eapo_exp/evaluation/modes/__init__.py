"""Evaluation modes: one strategy per module, one row each in EVAL_MODES.

A new mode is a module here (an EvalMode subclass: its batching, metrics and HR@1
convention), a row below, and `conf/eval/<name>.yaml` whose `mode` node names the class in
`_target_` with its constructor arguments; select it with `eval=<name>`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping

from omegaconf import DictConfig, OmegaConf

from eapo_exp.errors import ConfigError
from eapo_exp.evaluation.modes.base import TOP_K, EvalMode, Ranking
from eapo_exp.evaluation.modes.beam import BeamMode
from eapo_exp.evaluation.modes.generate import GenerateMode
from eapo_exp.evaluation.modes.score import ScoreMode

EVAL_MODES: dict[str, type[EvalMode]] = {mode.name: mode for mode in (
    ScoreMode,
    BeamMode,
    GenerateMode,
)}


def build_mode(node: DictConfig | Mapping) -> EvalMode:
    """The mode an `eval.mode` node names (`_target_`: a class of EVAL_MODES, the other keys
    its constructor arguments). Anything else is a ConfigError naming the key."""
    if isinstance(node, (DictConfig, Mapping)):
        params = (OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig)
                  else dict(node))
        target = params.pop("_target_", None)
    else:  # a bare value, e.g. eval.mode=beam on the command line
        params, target = {}, node
    mode = _located(target)
    if mode not in EVAL_MODES.values():
        raise ConfigError(f"eval.mode must be one of {', '.join(EVAL_MODES)}, picked with "
                          f"eval=<name> (conf/eval/); got {target!r}")
    try:
        inspect.signature(mode).bind(**params)
    except TypeError as error:
        raise ConfigError(f"eval.mode ({mode.__name__}): {error}") from None
    return mode(**params)


def _located(target) -> object:
    """The object a dotted `_target_` path names, or None."""
    module, _, attribute = str(target).rpartition(".")
    try:
        return getattr(importlib.import_module(module), attribute, None) if module else None
    except ImportError:
        return None


__all__ = ["EVAL_MODES", "TOP_K", "BeamMode", "EvalMode", "GenerateMode", "Ranking",
           "ScoreMode", "build_mode"]
