"""Every option in conf/ composes; bad keys, types and ranges fail at startup."""

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from eapo_exp.errors import ConfigError
from eapo_exp.validation import validate_config
from tests.conftest import CONF
from tests.conftest import compose_config as compose_with


def group_options():
    for group_dir in sorted(p for p in CONF.iterdir() if p.is_dir()):
        if group_dir.name in ("hydra", "accelerate"):
            continue
        for option in sorted(group_dir.glob("*.yaml")):
            yield group_dir.name, option.stem


@pytest.mark.parametrize("group,option", list(group_options()))
def test_every_option_composes(group, option):
    override = f"{group}={option}"
    cfg = compose_with([override])
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    if group not in ("experiment", "method"):  # those two are `# @package _global_`
        assert container[group] is not None


def test_default_config_validates():
    validate_config(compose_with([]))


def test_unknown_key_fails():
    with pytest.raises(ConfigCompositionException):
        compose_with(["dataset.no_such_key=1"])


def test_wrong_type_fails():
    with pytest.raises(ConfigCompositionException):
        compose_with(["dataset.history_len=ten"])


def test_unknown_stage_fails():
    with pytest.raises(ConfigCompositionException):
        compose_with(["stage=fly"])


@pytest.mark.parametrize("override,needle", [
    ("dataset.num_negatives=0", "num_negatives"),
    ("dataset.history_len=0", "history_len"),
    ("expert.data_fraction=1.5", "data_fraction"),
    ("expert.data_fraction=0", "data_fraction"),
])
def test_out_of_range_rejected(override, needle):
    with pytest.raises(ConfigError, match=needle):
        validate_config(compose_with([override]))


def test_method_presets_pick_loss_and_schedule():
    cfg = compose_with(["method=ea_sdpo"])
    assert (cfg.loss.name, cfg.beta_schedule.name, cfg.stage.value) == ("sdpo", "expert",
                                                                         "preference")
    assert compose_with(["method=zero_shot"]).train.sft.enabled is False


def test_experiment_declares_its_sweep():
    cfg = compose_with(["experiment=u_beta"])
    assert "beta_schedule.u_beta" in cfg.hydra.sweeper.params if "hydra" in cfg else True
