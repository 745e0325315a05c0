"""Every option in conf/ composes, and every `_target_` node in it names an importable object
whose signature takes the node's keys (torchtune's config validation): a renamed constructor
argument fails here, not in a sweep."""

from __future__ import annotations

import functools
import importlib.util
import inspect

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from eapo_exp.errors import ConfigError
from eapo_exp.evaluation.modes import EVAL_MODES, build_mode
from tests.conftest import CONF

# Keys Hydra's instantiate consumes itself.
INSTANTIATE_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
# Nodes built by eapo_exp.build.build_object, which drops their display `name`.
NAMED_NODES = {"loss", "beta_schedule"}
# Options that need a Hydra plugin, and its package (all in the `dev` extra).
PLUGINS = {"hydra/launcher=local_parallel": "hydra_plugins.hydra_joblib_launcher",
           "hydra/launcher=slurm": "hydra_plugins.hydra_submitit_launcher",
           "hydra/sweeper=optuna_u_beta": "hydra_plugins.hydra_optuna_sweeper"}


def config_options() -> list[str]:
    """One override per option file under conf/ (accelerate/ holds accelerate's own file)."""
    return [f"{option.parent.relative_to(CONF).as_posix()}={option.stem}"
            for option in sorted(CONF.rglob("*.yaml"))
            if option.parent != CONF and option.parent.name != "accelerate"]


@functools.cache
def composed(override: str) -> DictConfig:
    """The config with one option chosen, hydra node included (shared; do not modify)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("config", overrides=[override], return_hydra_config=True)


def target_nodes(node, path: str = ""):
    """(path, node) of every `_target_` node under `node`, nested ones included."""
    if isinstance(node, DictConfig) and "_target_" in node:
        yield path, node
    keys = node if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        # Never resolve here: hydra.run.dir's resolver creates the run directory.
        if OmegaConf.is_interpolation(node, key) or OmegaConf.is_missing(node, key):
            continue
        child = node[key]
        if isinstance(child, (DictConfig, ListConfig)):
            yield from target_nodes(child, f"{path}.{key}" if path else str(key))


def check_binds(path: str, node: DictConfig) -> None:
    target = get_object(node._target_)
    keys = {str(key) for key in node} - INSTANTIATE_KEYS
    if path in NAMED_NODES:
        keys.discard("name")
    # bind_partial: a stage may pass more arguments at build time (num_items, reuse_cached).
    try:
        inspect.signature(target).bind_partial(**dict.fromkeys(keys))
    except TypeError as error:
        raise AssertionError(f"{path}: {node._target_} does not take {sorted(keys)}: "
                             f"{error}") from None


@pytest.mark.parametrize("override", config_options())
def test_every_option_composes_and_its_targets_bind(override):
    # The test suite runs with the dev extra, so a missing plugin is a failure, not a skip.
    if override in PLUGINS:
        assert importlib.util.find_spec(PLUGINS[override]) is not None, \
            f"{PLUGINS[override]} is not installed: pip install -e '.[dev]'"
    cfg = composed(override)
    group = override.split("=")[0]
    # Resolving hydra.run.dir would create a run directory: resolve the job's config only.
    job = {key: OmegaConf.to_container(cfg[key], resolve=True, throw_on_missing=False)
           if OmegaConf.is_config(cfg[key]) else cfg[key] for key in cfg if key != "hydra"}
    if group in job:  # experiment and method files are `# @package _global_`
        assert job[group] is not None
    nodes = dict(target_nodes(cfg))
    assert {"dataset.source", "expert.model", "backbone.loader", "loss", "beta_schedule",
            "eval.mode", "chatrec", "hydra.callbacks.sweep_report"} <= set(nodes)
    for path, node in nodes.items():
        check_binds(path, node)


def test_a_renamed_argument_fails():
    node = OmegaConf.create({"_target_": "eapo_exp.evaluation.modes.BeamMode", "width": 5})
    with pytest.raises(AssertionError, match="width"):
        check_binds("eval.mode", node)


def test_each_eval_mode_has_its_yaml():
    built = {type(build_mode(composed(f"eval={path.stem}").eval.mode))
             for path in (CONF / "eval").glob("*.yaml")}
    assert built == set(EVAL_MODES.values())
    assert all(mode.name == name for name, mode in EVAL_MODES.items())


@pytest.mark.parametrize("node,needle", [
    ("beam", "eval.mode must be one of score, beam, generate"),
    ({"_target_": "os.path.join"}, "eval.mode must be one of"),
    ({"_target_": "eapo_exp.evaluation.modes.BeamMode", "length_normalize": True},
     "unexpected keyword argument 'length_normalize'"),
    ({"_target_": "eapo_exp.evaluation.modes.BeamMode", "beam_width": 0},
     "eval.mode.beam_width"),
    ({"_target_": "eapo_exp.evaluation.modes.GenerateMode", "max_new_tokens": "ten"},
     "eval.mode.max_new_tokens"),
])
def test_bad_eval_mode_is_a_config_error(node, needle):
    with pytest.raises(ConfigError, match=needle):
        build_mode(OmegaConf.create(node) if isinstance(node, dict) else node)
