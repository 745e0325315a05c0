"""The method table (eapo_exp.methods) against conf/: every preset is its row, every loss and β
schedule has its row, names follow the paper, and bad names fail with the key."""

from __future__ import annotations

import re

import pytest
from hydra.utils import get_class

from eapo_exp.errors import ConfigError
from eapo_exp.methods import (
    CONFIG_KEYS,
    EXPERT_NAMES,
    LOSSES,
    METHODS,
    REFERENCE,
    SCHEDULES,
    job_method,
    preference_method,
    report_order,
)
from tests.conftest import CONF, compose_config

PRESETS = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_is_its_row(preset):
    cfg = compose_config([f"method={preset}"])
    method = job_method(cfg.stage, cfg.loss.name, cfg.beta_schedule.name, cfg.train.sft.enabled,
                        cfg.prompt.item_repr)
    assert method is not None and method.name == preset
    assert method == METHODS[preset]
    if method.kind == "preference":
        assert (cfg.loss.name, cfg.beta_schedule.name) == (method.loss, method.schedule)


def test_every_baseline_has_a_preset():
    """Preference methods are composable from loss= and beta_schedule= without one; every
    other row has its preset (popularity comes with every expert-stage job)."""
    baselines = {m.name for m in METHODS.values() if m.kind != "preference"}
    assert baselines - {"popularity"} <= set(PRESETS)


@pytest.mark.parametrize(("group", "rows"), [("loss", LOSSES), ("beta_schedule", SCHEDULES)])
def test_every_option_has_one_row(group, rows):
    options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    assert sorted(row.name for row in rows) == options
    for option in options:
        assert compose_config([f"{group}={option}"])[group].name == option


def test_schedules_that_read_the_expert():
    for schedule in SCHEDULES:
        target = compose_config([f"beta_schedule={schedule.name}"]).beta_schedule._target_
        assert schedule.uses_expert == get_class(target).needs_expert_scores, schedule.name
        dependencies = preference_method("dpo", schedule.name).depends_on
        assert ("expert" in dependencies) == schedule.uses_expert


def test_names_and_bases():
    names = {(m.loss, m.schedule): (m.name, m.display, m.base) for m in METHODS.values()
             if m.kind == "preference"}
    assert names[("dpo", "fixed")] == ("dpo", "DPO", None)
    assert names[("dpo", "beta_dpo")] == ("beta_dpo", "β-DPO", "dpo")
    assert names[("dpo", "expert")] == ("eapo", "EAPO", "dpo")
    assert names[("sdpo", "expert")] == ("ea_sdpo", "EA-SDPO", "sdpo")
    assert names[("sdpo", "beta_dpo")] == ("beta_sdpo", "β-S-DPO", "sdpo")
    assert names[("cpo", "expert")] == ("ea_cpo", "EA-CPO", "cpo")
    assert len(names) == len(LOSSES) * len(SCHEDULES)
    displays = [m.display for m in METHODS.values()]
    assert len(set(displays)) == len(displays)
    for method in METHODS.values():
        assert re.fullmatch(r"[a-z0-9_]+", method.name), method.name
        assert set(method.depends_on) <= set(CONFIG_KEYS), method.name
        if method.base is not None:
            assert METHODS[method.base].loss == method.loss
    assert REFERENCE in METHODS


def test_job_method_by_stage():
    assert job_method("data", "dpo", "fixed", True) is None
    assert job_method("expert", "dpo", "fixed", True).name == "expert_only"
    assert job_method("sft", "dpo", "expert", False).name == "zero_shot"
    assert job_method("all", "ipo", "expert", True).display == "EA-IPO"


def test_report_order():
    assert report_order() == [
        "Popularity", *EXPERT_NAMES.values(), "Zero-shot", "ChatRec", "SFT", "LLaRA",
        "DPO", "β-DPO", "EAPO", "S-DPO", "β-S-DPO", "EA-SDPO", "IPO", "β-IPO", "EA-IPO",
        "CPO", "β-CPO", "EA-CPO"]


@pytest.mark.parametrize(("loss", "schedule", "needle"), [
    ("kto", "fixed", "loss=kto has no row in eapo_exp.methods.LOSSES"),
    ("dpo", "cosine", "beta_schedule=cosine has no row in eapo_exp.methods.SCHEDULES"),
])
def test_unknown_loss_or_schedule_names_the_key(loss, schedule, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        preference_method(loss, schedule)
