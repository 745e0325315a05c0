"""Bad keys, types and ranges fail at startup; experiments declare sweeps that apply.
(Every option composing, with its `_target_` nodes bound: tests/test_conf_targets.py.)"""

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from eapo_exp.errors import ConfigError
from eapo_exp.validation import validate_config
from tests.conftest import CONF
from tests.conftest import compose_config as compose_with
from tests.test_conf_targets import composed


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
    ("backbone.compile.enabled=yes", "backbone.compile.enabled must be true, false or auto"),
])
def test_out_of_range_rejected(override, needle):
    with pytest.raises(ConfigError, match=needle):
        validate_config(compose_with([override]))


def test_method_presets_pick_loss_and_schedule():
    cfg = compose_with(["method=ea_sdpo"])
    assert (cfg.loss.name, cfg.beta_schedule.name, cfg.stage.value) == ("sdpo", "expert",
                                                                         "preference")
    assert compose_with(["method=zero_shot"]).train.sft.enabled is False


def sweep_values(key: str, value) -> list:
    override = OverridesParser.create().parse_overrides([f"{key}={value}"])[0]
    return list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_experiment_declares_its_sweep(experiment):
    """Each swept group has the swept options, and the first job of the sweep (every group at
    its first option) has each swept value key and takes every swept value (the schema's
    type check). cpu_scale is the others' base and sweeps nothing."""
    params = composed(f"experiment={experiment}").hydra.sweeper.params or {}
    assert bool(params) == (experiment != "cpu_scale"), dict(params)
    swept = {key: sweep_values(key, value) for key, value in params.items()}
    groups = {key: values for key, values in swept.items() if (CONF / key).is_dir()}
    for key, values in groups.items():
        missing = [v for v in values if not (CONF / key / f"{v}.yaml").exists()]
        assert not missing, f"{experiment}: no conf/{key}/ option {missing}"
    job = compose_with([f"experiment={experiment}",
                        *(f"{key}={values[0]}" for key, values in groups.items())])
    for key in swept.keys() - groups.keys():
        assert OmegaConf.select(job, key, default=KeyError) is not KeyError, (experiment, key)
        for value in swept[key]:
            OmegaConf.update(job, key, value)  # raises on a value of the wrong type


PAPER_EXPERIMENTS = ("table1", "table2", "ablation", "u_beta", "expert_quality", "cold_start",
                     "cross_domain", "all_methods")


@pytest.mark.parametrize("experiment", PAPER_EXPERIMENTS)
def test_paper_experiments_run_three_seeds_at_paper_size(experiment):
    """By default the paper's sizes and seeds 0-2; `scale=cpu` gives the CPU sizes."""
    seeds = sweep_values("seed", composed(f"experiment={experiment}").hydra.sweeper.params.seed)
    assert len(seeds) >= 3
    paper = compose_with([f"experiment={experiment}"])
    assert paper.train.sft.max_train_samples == 0 and paper.eval.max_samples == 0
    assert paper.train.preference.lr == 1e-5 and paper.train.sft.epochs == 2
    cpu = compose_with([f"experiment={experiment}", "scale=cpu"])
    assert cpu.train.sft.max_train_samples == 448 and cpu.eval.max_samples == 200


@pytest.mark.parametrize("experiment", PAPER_EXPERIMENTS)
def test_paper_experiments_log_to_wandb_grouped_by_experiment(experiment):
    cfg = compose_with([f"experiment={experiment}"])
    assert (cfg.logger.name, cfg.logger.mode, cfg.logger.group) == ("wandb", None, experiment)
    assert compose_with([f"experiment={experiment}", "logger=none"]).logger.name == "none"


@pytest.mark.parametrize("experiment", ["main", "smoke", "cpu_long", "cpu_scale"])
def test_cpu_experiments_and_make_run_log_to_no_wandb(experiment):
    assert compose_with([f"experiment={experiment}"]).logger.name == "none"
    assert composed(f"experiment={experiment}").hydra.callbacks.sweep_report.wandb == "auto"


def test_u_beta_sweeps_the_upper_bound():
    assert "beta_schedule.u_beta" in composed("experiment=u_beta").hydra.sweeper.params


def test_cpu_long_scores_the_sft_model_its_preference_methods_start_from():
    """The sweep's SFT-stage row (LLaRA) must train the same SFT model as DPO, S-DPO and EAPO
    (same backbone, prompt, SFT and item-expert settings), or the "vs SFT" line compares
    with a different model."""
    from eapo_exp.stages.llm import backbone_spec, prompt_spec
    from eapo_exp.stages.sft_stage import item_expert_config

    params = composed("experiment=cpu_long").hydra.sweeper.params
    methods = sweep_values("method", params.method)
    assert "llara" in methods

    def sft_inputs(method: str) -> tuple:
        cfg = compose_with(["experiment=cpu_long", f"method={method}"])
        return (backbone_spec(cfg.backbone), prompt_spec(cfg.prompt),
                OmegaConf.to_container(cfg.train.sft, resolve=True),
                OmegaConf.to_container(item_expert_config(cfg), resolve=True))

    starting_point = sft_inputs("llara")
    for method in methods:
        assert sft_inputs(method) == starting_point, method
    assert compose_with(["experiment=cpu_long", "method=llara"]).stage == "sft"


@pytest.mark.parametrize("experiment", ["u_beta", "cpu_long_u_beta"])
def test_a_u_beta_experiment_takes_one_u_beta_value_from_the_command_line(experiment: str):
    """A multirun puts command-line overrides before the sweeper's method=eapo, so the
    experiment itself must compose EAPO's β schedule for beta_schedule.u_beta to exist."""
    cfg = compose_with([f"experiment={experiment}", "beta_schedule.u_beta=0.3"])
    assert (cfg.beta_schedule.name, cfg.beta_schedule.u_beta) == ("expert", 0.3)


def test_inductor_artefacts_go_under_the_cache_dir_even_after_transformers_is_imported(
        monkeypatch, tmp_path):
    import transformers  # noqa: F401  (importing it sets TORCHINDUCTOR_CACHE_DIR to /tmp/...)

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/torchinductor_elsewhere")
    monkeypatch.setenv("EAPO_CACHE_DIR", str(tmp_path))
    cfg = compose_with(["backbone.compile.enabled=true"])
    assert cfg.backbone.compile.cache_dir == f"{tmp_path}/inductor"
