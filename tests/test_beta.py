"""β schedules: z_c, EAPO's expert β (eq. 8-9), β-DPO's filter and state, validation."""

from __future__ import annotations

import copy
import io
import math
from pathlib import Path

import pytest
import torch

from eapo_exp.beta import (
    BetaDPO,
    BetaInputs,
    BetaSchedule,
    ExpertBeta,
    FixedBeta,
    critical_beta,
    critical_z,
    expert_betas,
    gradient_factor,
)
from eapo_exp.beta.beta_dpo import keep_count
from eapo_exp.errors import ConfigError
from eapo_exp.losses import DPOLoss, PreferenceLogps, SDPOLoss

# ---------------------------------------------------------------- critical point


def test_critical_z_solves_the_equation():
    z = critical_z()
    assert abs(math.exp(z) * (z - 1) - 1) < 1e-6
    assert abs(math.exp(z) * (z - 1) - 1) < 1e-12
    assert z == pytest.approx(1.2785, abs=1e-4)


def test_gradient_factor_peaks_at_critical_beta():
    delta = 5.0
    beta_c = critical_beta(delta)
    g = [gradient_factor(beta_c * s, delta) for s in (0.9, 0.99, 1.0, 1.01, 1.1)]
    assert g[2] == max(g) and g[0] < g[1] < g[2] and g[2] > g[3] > g[4]
    assert gradient_factor(0.5, 2.0) == pytest.approx(0.5 / (1 + math.e), rel=1e-14)
    assert gradient_factor(0.5, -2000.0) == pytest.approx(0.5)          # no overflow
    t = gradient_factor(torch.tensor([0.5]), torch.tensor([2.0]))
    assert t.item() == pytest.approx(0.5 / (1 + math.e), rel=1e-6)


# ---------------------------------------------------------------- EAPO expert β


def _scores(b: int = 6, k: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, generator=g) + 2, torch.randn(b, k, generator=g)


def test_expert_beta_range_and_order():
    schedule = ExpertBeta(u_beta=0.75, gamma=12.785)
    s_w, s_l = _scores()
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[2, 3:] = False
    beta = schedule(BetaInputs(mask, expert_chosen=s_w, expert_rejected=s_l)).beta
    lower = critical_z() / 12.785
    assert lower == pytest.approx(0.1, abs=1e-4)
    assert beta.shape == (6, 5) and not beta.requires_grad
    assert ((beta >= lower) & (beta <= 0.75)).all()
    for row in range(6):
        valid = mask[row].nonzero().squeeze(1)
        b_row, s_row = beta[row, valid], s_l[row, valid]
        # closest to the chosen (highest expert score) -> smallest β, lowest score -> largest
        assert b_row.argmin() == s_row.argmax() and b_row.argmax() == s_row.argmin()
        assert b_row.min().item() == pytest.approx(lower) and b_row.max().item() == 0.75
        # β is affine in w within the prompt
        w = s_w[row] - s_row
        expected = (w - w.min()) / (w.max() - w.min()) * (0.75 - lower) + lower
        assert torch.allclose(b_row, expected, atol=1e-6)


def test_expert_beta_degenerate_cases_get_the_midpoint():
    schedule = ExpertBeta(u_beta=0.75)
    mid = (schedule.lower + 0.75) / 2
    # K = 1
    out = schedule(BetaInputs(torch.ones(2, 1, dtype=torch.bool),
                              expert_chosen=torch.tensor([1.0, 2.0]),
                              expert_rejected=torch.tensor([[0.0], [5.0]])))
    assert torch.allclose(out.beta, torch.full((2, 1), mid))
    assert out.keep is None and not out.flat_mean
    # all rejected tie, and a row with a single valid entry among padding
    s_l = torch.tensor([[0.3, 0.3, 0.3], [0.1, 9.0, -4.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    beta = schedule(BetaInputs(mask, expert_chosen=torch.tensor([1.0, 1.0]),
                               expert_rejected=s_l)).beta
    assert torch.allclose(beta[mask], torch.full((4,), mid))
    assert torch.allclose(beta[~mask], torch.full((2,), schedule.lower))   # masked: finite


def test_expert_beta_with_lower_equal_upper_is_constant_dpo():
    lower = critical_z() / 12.785
    s_w, s_l = _scores(b=8, k=4, seed=1)
    w = s_w.unsqueeze(1) - s_l
    w[0] = 0.5                                                   # a tie row as well
    mask = torch.ones(8, 4, dtype=torch.bool)
    mask[3, 1:] = False
    betas = expert_betas(w, mask, lower, lower)
    constant = torch.full((8, 4), lower)
    assert torch.equal(betas, constant)

    g = torch.Generator().manual_seed(2)
    logps = PreferenceLogps(policy_chosen=-10 * torch.rand(8, generator=g),
                            policy_rejected=-10 * torch.rand(8, 4, generator=g),
                            ref_chosen=-10 * torch.rand(8, generator=g),
                            ref_rejected=-10 * torch.rand(8, 4, generator=g), rejected_mask=mask)
    for loss in (DPOLoss(), SDPOLoss()):
        a, b = loss(logps, betas), loss(logps, lower)
        assert torch.equal(a.loss, b.loss) and torch.equal(a.per_prompt_loss, b.per_prompt_loss)


def test_expert_beta_needs_scores():
    assert ExpertBeta.needs_expert_scores and not FixedBeta.needs_expert_scores
    with pytest.raises(ConfigError, match="expert"):
        ExpertBeta()(BetaInputs(torch.ones(2, 3, dtype=torch.bool)))
    with pytest.raises(ValueError, match="finite"):
        ExpertBeta()(BetaInputs(torch.ones(1, 2, dtype=torch.bool),
                                expert_chosen=torch.tensor([1.0]),
                                expert_rejected=torch.tensor([[float("nan"), 0.0]])))


def test_beta_inputs_check_shapes():
    with pytest.raises(ValueError, match="bool"):
        BetaInputs(torch.ones(2, 3))
    with pytest.raises(ValueError, match="expert_chosen"):
        BetaInputs(torch.ones(2, 3, dtype=torch.bool), expert_chosen=torch.zeros(3))
    with pytest.raises(ValueError, match="margins"):
        BetaInputs(torch.ones(2, 3, dtype=torch.bool), margins=torch.zeros(3, 2))


# ---------------------------------------------------------------- validation


def test_validation_errors():
    with pytest.raises(ConfigError, match="beta"):
        FixedBeta(beta=0.0)
    with pytest.raises(ConfigError):
        FixedBeta(beta=-0.1)
    lower = critical_z() / 12.785
    with pytest.raises(ConfigError, match=r"0\.1000.*0\.05"):
        ExpertBeta(u_beta=0.05)
    with pytest.raises(ConfigError):
        ExpertBeta(u_beta=lower)                                  # U_β = z_c/γ is not allowed
    with pytest.raises(ConfigError, match="gamma"):
        ExpertBeta(gamma=0.0)
    with pytest.raises(ConfigError, match="gamma"):
        ExpertBeta(gamma=-3.0)
    with pytest.raises(ConfigError, match="rho"):
        BetaDPO(rho=1.0)
    with pytest.raises(ConfigError, match="beta0"):
        BetaDPO(beta0=0.0)
    with pytest.raises(ConfigError, match="momentum"):
        BetaDPO(momentum=1.0)
    schedule = ExpertBeta()
    schedule.u_beta = 0.01                                        # validate() on its own
    with pytest.raises(ConfigError):
        schedule.validate()


def test_fixed_beta_and_target_construction():
    schedule = FixedBeta(0.25)
    out = schedule(BetaInputs(torch.ones(3, 2, dtype=torch.bool)))
    assert torch.equal(out.beta, torch.full((3, 2), 0.25)) and out.keep is None
    assert schedule.state_dict() == {}
    instantiate = pytest.importorskip("hydra.utils").instantiate
    built = instantiate({"_target_": "eapo_exp.beta.ExpertBeta", "u_beta": 0.5})
    assert isinstance(built, BetaSchedule) and built.u_beta == 0.5


# ---------------------------------------------------------------- β-DPO


def _batch(seed: int, b: int = 6, k: int = 3, scale: float = 2.0,
           mask: torch.Tensor | None = None) -> BetaInputs:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, k, dtype=torch.bool) if mask is None else mask
    margins = scale * torch.randn(b, generator=g).unsqueeze(1) - scale * torch.randn(
        b, k, generator=g)
    return BetaInputs(mask, margins=torch.where(mask, margins, torch.zeros_like(margins)))


def test_beta_dpo_keeps_floor_fraction_and_respects_mask():
    mask = torch.ones(6, 3, dtype=torch.bool)
    mask[0, 1:] = False
    mask[4, 2] = False                                               # N = 15 valid pairs
    out = BetaDPO(rho=0.2)(_batch(0, mask=mask))
    assert out.keep.dtype == torch.bool and out.flat_mean
    assert int(out.keep.sum()) == math.floor(0.8 * 15) == 12
    assert not out.keep[~mask].any()
    assert out.beta.shape == (6, 3) and (out.beta == out.beta[0, 0]).all()
    assert [keep_count(n, 0.2) for n in (1, 4, 5, 10, 64)] == [1, 3, 4, 8, 51]
    assert keep_count(10, 0.3) == 7
    with pytest.raises(ValueError, match="margins"):
        BetaDPO()(BetaInputs(mask))


def test_beta_dpo_formula_and_first_batch():
    schedule = BetaDPO(beta0=0.1, rho=0.2, alpha=0.6, momentum=0.9)
    # first batch: πθ = πref, every M = 0 -> σ = 0, uniform keep, β = β0
    out = schedule(BetaInputs(torch.ones(5, 2, dtype=torch.bool), margins=torch.zeros(5, 2)))
    assert torch.allclose(out.beta, torch.full((5, 2), 0.1)) and schedule.sigma == 0.0
    assert int(out.keep.sum()) == 8

    batch = _batch(3)
    m = batch.margins.double()
    out = schedule(batch)
    m0 = 0.1 * m.mean().item()
    assert schedule.m0 == pytest.approx(m0, rel=1e-12)
    assert schedule.sigma == pytest.approx(0.1 * m.flatten().std().item(), rel=1e-12)
    kept = m[out.keep]
    expected = 0.1 * (1 + 0.6 * (kept.mean().item() - m0))
    assert out.beta[0, 0].item() == pytest.approx(max(expected, 1e-3), rel=1e-6)
    assert schedule.step == 2


def test_beta_dpo_clamped():
    schedule = BetaDPO(beta0=0.1, alpha=5.0)
    batch = _batch(0)
    out = schedule(BetaInputs(batch.rejected_mask, margins=batch.margins - 100.0))
    assert (out.beta == 1e-3).all()                               # very negative margins


def test_beta_dpo_filter_prefers_typical_margins():
    schedule = BetaDPO(rho=0.2)
    schedule.load_state_dict({**schedule.state_dict(), "m0": 0.0, "sigma": 1.0})
    margins = torch.zeros(10, 1)
    margins[7] = 10.0                                              # one outlier pair
    for _ in range(20):
        out = schedule(BetaInputs(torch.ones(10, 1, dtype=torch.bool), margins=margins))
        assert not out.keep[7, 0]


def test_beta_dpo_deterministic_and_resumable():
    a, b = BetaDPO(seed=7), BetaDPO(seed=7)
    for step in range(3):
        out_a, out_b = a(_batch(step)), b(_batch(step))
        assert torch.equal(out_a.beta, out_b.beta) and torch.equal(out_a.keep, out_b.keep)

    buffer = io.BytesIO()
    torch.save(copy.deepcopy(a.state_dict()), buffer)
    expected = [a(_batch(s)) for s in (10, 11)]

    resumed = BetaDPO(seed=123)                                   # seed comes from the state
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for s, want in zip((10, 11), expected):
        got = resumed(_batch(s))
        assert torch.equal(got.beta, want.beta) and torch.equal(got.keep, want.keep)
    assert resumed.state_dict()["m0"] == a.state_dict()["m0"]
    assert resumed.step == a.step == 5

    # another seed draws another subset (σ large: the weights are nearly uniform)
    flat = {"m0": 0.0, "sigma": 1e3, "step": 0}
    c, d = BetaDPO(seed=7), BetaDPO(seed=8)
    c.load_state_dict({**c.state_dict(), **flat})
    d.load_state_dict({**d.state_dict(), **flat})
    assert not torch.equal(c(_batch(0)).keep, d(_batch(0)).keep)


class _Batches:
    """PreferenceBatches' interface over 12 fixed examples: 2 prompts x 3 micro-batches a step,
    K = 3 one-token rejected completions, reference log-probs 0."""

    grad_accum, num_rejected, expert_scores = 3, 3, None

    def __init__(self) -> None:
        self.reference = {"logps": torch.zeros(12, 4)}

    def tokens(self, index: int) -> tuple[list[int], list[list[int]]]:
        return [5 + index % 4, 6 + index % 3], [[7 + index % 5], [8], [9, 10], [11]]

    def indices(self, step: int, micro: int) -> list[int]:
        first = 2 * (step * self.grad_accum + micro) % 12
        return [first, first + 1]


def test_beta_dpo_decides_over_the_optimizer_batch_with_a_flat_mean():
    from transformers import LlamaConfig, LlamaForCausalLM

    from eapo_exp.training.preference import PreferenceStep

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2))
    schedule = BetaDPO(rho=0.2)
    seen: list[tuple[int, int]] = []
    compute = schedule.compute
    schedule.compute = lambda batch: seen.append(batch.shape) or compute(batch)
    step = PreferenceStep(model, _Batches(), DPOLoss(), schedule, pad_id=0,
                          micro_batches=range(3))
    for number in range(2):
        losses = [step(number, micro)[0] for micro in range(3)]
        pairs = slice(3 * number, 3 * number + 3)
        betas = torch.cat([beta for _, beta in step.pair_betas[pairs]]).double()
        deltas = torch.cat([delta for _, delta in step.pair_discrepancies[pairs]]).double()
        # one decision per step over its 2 x 3 prompts x K = 3 pairs: ⌊0.8 · 18⌋ kept, not
        # 3 x ⌊0.8 · 6⌋ = 12 as per micro-batch
        assert seen[number] == (6, 3) and betas.numel() == 14
        flat_mean = -torch.nn.functional.logsigmoid(betas * deltas).mean()
        assert (sum(losses) / 3).item() == pytest.approx(flat_mean.item(), rel=1e-5)
    assert schedule.step == 2


def test_expert_keys_a_preference_model_only_when_its_beta_reads_the_expert():
    from types import SimpleNamespace

    from eapo_exp.cache import fingerprint
    from eapo_exp.stages.preference_stage import preference_spec
    from tests.conftest import compose_config

    samples = SimpleNamespace(fingerprint="samples")
    for method, keyed in (("dpo", False), ("beta_dpo", False), ("eapo", True)):
        cfg = compose_config([f"method={method}", "dataset=synthetic"])
        a, b = (fingerprint(preference_spec(cfg, samples, None, Path(f"/experts/{name}")))
                for name in ("sasrec-a", "gru4rec-b"))
        assert (a != b) == keyed, method
