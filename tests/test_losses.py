"""Preference losses: hand-computed values, S-DPO = DPO at K = 1, gradients, masking."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from eapo_exp.beta import BetaInputs, FixedBeta, gradient_factor
from eapo_exp.errors import ConfigError
from eapo_exp.losses import (
    CPOLoss,
    DPOLoss,
    IPOLoss,
    LossOutput,
    PreferenceLogps,
    PreferenceLoss,
    SDPOLoss,
    response_nll,
)

ALL_LOSSES = [DPOLoss(), SDPOLoss(), IPOLoss(), IPOLoss(length_normalize=True),
              IPOLoss(form="standard"), CPOLoss()]


def _random_logps(b: int, k: int, seed: int = 0, requires_grad: bool = False,
                  mask: torch.Tensor | None = None) -> PreferenceLogps:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return -torch.rand(*shape, generator=g, dtype=torch.float64) * 30 - 1

    policy_chosen = r(b).requires_grad_(requires_grad)
    policy_rejected = r(b, k).requires_grad_(requires_grad)
    return PreferenceLogps(
        policy_chosen=policy_chosen, policy_rejected=policy_rejected,
        ref_chosen=r(b), ref_rejected=r(b, k),
        chosen_lengths=torch.randint(1, 9, (b,), generator=g),
        rejected_lengths=torch.randint(1, 9, (b, k), generator=g),
        rejected_mask=mask)


def _tiny() -> PreferenceLogps:
    """One prompt, two rejected; r̂_w = 1, r̂_1 = −1, r̂_2 = 0.5."""
    return PreferenceLogps(
        policy_chosen=torch.tensor([-4.0], dtype=torch.float64),
        policy_rejected=torch.tensor([[-9.0, -6.0]], dtype=torch.float64),
        ref_chosen=torch.tensor([-5.0], dtype=torch.float64),
        ref_rejected=torch.tensor([[-8.0, -6.5]], dtype=torch.float64),
        chosen_lengths=torch.tensor([2]), rejected_lengths=torch.tensor([[3, 4]]))


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ---------------------------------------------------------------- hand-computed values


def test_dpo_hand_computed():
    out = DPOLoss()(_tiny(), torch.tensor([[0.1, 0.5]], dtype=torch.float64))
    # Δ = [2, 0.5]; β Δ = [0.2, 0.25]
    expected = (-math.log(_sig(0.2)) - math.log(_sig(0.25))) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    assert out.logratio_discrepancy.tolist() == [[2.0, 0.5]]
    assert out.margins[0].tolist() == pytest.approx([0.2, 0.25])
    assert out.chosen_rewards.tolist() == pytest.approx([0.3 * 1.0])       # mean β · r̂_w
    assert out.rejected_rewards[0].tolist() == pytest.approx([-0.1, 0.25])


def test_sdpo_hand_computed():
    out = SDPOLoss()(_tiny(), torch.tensor([[0.1, 0.5]], dtype=torch.float64))
    lse = math.log(math.exp(0.1 * (-1 - 1)) + math.exp(0.5 * (0.5 - 1)))
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(lse)), rel=1e-12)


def test_ipo_hand_computed():
    out = IPOLoss(tau=0.25)(_tiny(), torch.tensor([[0.1, 0.5]], dtype=torch.float64))
    # 1/(2τ) = 2; (0.2 − 2)² = 3.24, (0.25 − 2)² = 3.0625
    assert out.loss.item() == pytest.approx((3.24 + 3.0625) / 2, rel=1e-12)


def test_ipo_standard_form_and_its_relation_to_eq12():
    beta = torch.tensor([[0.1, 0.5]], dtype=torch.float64)
    out = IPOLoss(form="standard")(_tiny(), beta)
    # Δ = [2, 0.5]; targets 1/(2β) = [5, 1]: (2 − 5)² = 9, (0.5 − 1)² = 0.25
    assert out.loss.item() == pytest.approx((9 + 0.25) / 2, rel=1e-12)
    # eq. 12 at (β, τ) = β² · the standard IPO at regularisation τβ, pair by pair (K = 1)
    tau, logps = 0.3, _random_logps(b=6, k=1, seed=6)
    betas = torch.rand(6, 1, generator=torch.Generator().manual_seed(0),
                       dtype=torch.float64) + 0.05
    paper = IPOLoss(tau=tau)(logps, betas).per_prompt_loss
    standard = IPOLoss(form="standard")(logps, tau * betas).per_prompt_loss
    assert torch.allclose(paper, betas[:, 0] ** 2 * standard, rtol=1e-12)
    with pytest.raises(ConfigError, match="loss.form"):
        IPOLoss(form="trl")


def test_float32_beta_runs_in_the_logprobs_precision():
    # With float64 log-probs, IPO's 1/(2β) is float64: from FixedBeta told the log-probs'
    # dtype, and from a Python number.
    mask = torch.ones(1, 2, dtype=torch.bool)
    beta = FixedBeta(0.3)(BetaInputs(rejected_mask=mask, logp_dtype=torch.float64)).beta
    assert beta.dtype == torch.float64
    target = 1.0 / (2.0 * 0.3)
    expected = ((2.0 - target) ** 2 + (0.5 - target) ** 2) / 2
    for given in (beta, 0.3):
        out = IPOLoss(form="standard")(_tiny(), given)
        assert out.loss.dtype == torch.float64
        assert out.loss.item() == pytest.approx(expected, rel=1e-14, abs=0)
    # A float32 β is widened, never narrowed the other way.
    assert FixedBeta(0.3)(BetaInputs(rejected_mask=mask)).beta.dtype == torch.float32
    out = IPOLoss(form="standard")(_tiny(), torch.tensor(0.3, dtype=torch.float32))
    assert out.loss.dtype == torch.float64


def test_ipo_length_normalized_hand_computed():
    out = IPOLoss(tau=0.5, length_normalize=True)(_tiny(), 1.0)
    # per-token r̂: w: (−4+5)/2 = 0.5; 1: (−9+8)/3 = −1/3; 2: (−6+6.5)/4 = 0.125
    d1, d2 = 0.5 + 1 / 3, 0.5 - 0.125
    assert out.loss.item() == pytest.approx(((d1 - 1) ** 2 + (d2 - 1) ** 2) / 2, rel=1e-12)


def test_cpo_hand_computed_reference_free():
    logps = _tiny()
    logps.ref_chosen = logps.ref_rejected = None
    out = CPOLoss(alpha=0.5)(logps, torch.tensor([[0.1, 0.5]], dtype=torch.float64))
    # log πθ: w −4, rejected −9, −6 → Δ = [5, 2]; NLL = 4/2 = 2
    pref = (-math.log(_sig(0.5)) - math.log(_sig(1.0))) / 2
    assert out.loss.item() == pytest.approx(pref + 0.5 * 2.0, rel=1e-12)
    assert out.chosen_rewards.tolist() == pytest.approx([0.3 * -4.0])     # β · log πθ
    assert out.logratio_discrepancy.tolist() == [[5.0, 2.0]]


def test_dpo_needs_reference_and_cpo_needs_lengths():
    logps = _tiny()
    logps.ref_chosen = logps.ref_rejected = None
    with pytest.raises(ValueError, match="reference"):
        DPOLoss()(logps, 0.1)
    logps.chosen_lengths = None
    with pytest.raises(ValueError, match="chosen_lengths"):
        CPOLoss()(logps, 0.1)


def test_bad_shapes_rejected():
    with pytest.raises(ValueError, match="broadcast"):
        DPOLoss()(_tiny(), torch.ones(3))
    with pytest.raises(ValueError, match="policy_chosen"):
        PreferenceLogps(policy_chosen=torch.zeros(3), policy_rejected=torch.zeros(2, 1))
    with pytest.raises(ValueError, match="bool"):
        PreferenceLogps(policy_chosen=torch.zeros(2), policy_rejected=torch.zeros(2, 1),
                        rejected_mask=torch.ones(2, 1))
    with pytest.raises(ConfigError):
        IPOLoss(tau=0)


# ---------------------------------------------------------------- S-DPO vs DPO, gradients


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.75, 3.0, "per-pair"])
def test_sdpo_equals_dpo_at_k1(beta):
    logps = _random_logps(b=64, k=1, seed=1)
    beta = torch.rand(64, 1, dtype=torch.float64) + 0.05 if beta == "per-pair" else beta
    dpo, sdpo = DPOLoss()(logps, beta), SDPOLoss()(logps, beta)
    assert torch.equal(dpo.per_prompt_loss, sdpo.per_prompt_loss)
    assert torch.equal(dpo.loss, sdpo.loss)


@pytest.mark.parametrize("loss_cls", [DPOLoss, SDPOLoss])
def test_gradient_wrt_margin_is_minus_gradient_factor(loss_cls):
    delta = torch.linspace(-6, 6, 25, dtype=torch.float64).requires_grad_(True)
    beta = torch.linspace(0.05, 2.0, 25, dtype=torch.float64)
    zeros = torch.zeros(25, 1, dtype=torch.float64)
    logps = PreferenceLogps(policy_chosen=delta, policy_rejected=zeros,
                            ref_chosen=torch.zeros(25, dtype=torch.float64), ref_rejected=zeros)
    out = loss_cls()(logps, beta.unsqueeze(1))
    (grad,) = torch.autograd.grad(out.per_prompt_loss.sum(), delta)
    assert torch.allclose(grad, -gradient_factor(beta, delta.detach()), rtol=1e-12, atol=0)


def test_dpo_gradient_per_pair_with_k_rejected():
    """Each pair's gradient is −G(β_j, Δ_j)/K (the mean over the prompt's K pairs)."""
    logps = _random_logps(b=3, k=4, seed=2, requires_grad=True)
    beta = torch.rand(3, 4, dtype=torch.float64) + 0.1
    out = DPOLoss()(logps, beta)
    (g_rej,) = torch.autograd.grad(out.per_prompt_loss.sum(), logps.policy_rejected)
    delta = out.logratio_discrepancy
    assert torch.allclose(g_rej, gradient_factor(beta, delta) / 4, rtol=1e-12)


# ---------------------------------------------------------------- masking


@pytest.mark.parametrize("loss", ALL_LOSSES, ids=lambda m: repr(m))
def test_masked_entries_contribute_nothing(loss):
    full = _random_logps(b=2, k=3, seed=3)
    beta = torch.tensor([[0.2, 0.3, 0.4], [0.5, 0.6, 0.7]], dtype=torch.float64)
    mask = torch.tensor([[True, False, True], [True, True, False]])

    padded = _random_logps(b=2, k=3, seed=3, requires_grad=True, mask=mask)
    with torch.no_grad():                       # garbage in the padded slots
        padded.policy_rejected[~mask] = float("nan")
    padded.ref_rejected[~mask] = float("-inf")
    padded.rejected_lengths[~mask] = 0
    out = loss(padded, beta)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert torch.isfinite(padded.policy_rejected.grad).all()
    assert (padded.policy_rejected.grad[~mask] == 0).all()

    # the same prompts, each given only its valid entries
    for row in range(2):
        keep = mask[row]
        single = PreferenceLogps(
            policy_chosen=full.policy_chosen[row:row + 1],
            policy_rejected=full.policy_rejected[row:row + 1, keep],
            ref_chosen=full.ref_chosen[row:row + 1],
            ref_rejected=full.ref_rejected[row:row + 1, keep],
            chosen_lengths=full.chosen_lengths[row:row + 1],
            rejected_lengths=full.rejected_lengths[row:row + 1, keep])
        ref_out = loss(single, beta[row:row + 1, keep])
        assert out.per_prompt_loss[row].item() == pytest.approx(ref_out.loss.item(), rel=1e-12)
    assert out.loss.item() == pytest.approx(out.per_prompt_loss.mean().item(), rel=1e-12)
    stats = out.stats()
    assert stats["beta/min"] == 0.2 and stats["beta/max"] == 0.6
    assert stats["beta/mean"] == pytest.approx((0.2 + 0.4 + 0.5 + 0.6) / 4)


@pytest.mark.parametrize("loss", ALL_LOSSES, ids=lambda m: repr(m))
def test_prompt_without_valid_pair_is_left_out(loss):
    mask = torch.tensor([[True, True], [False, False]])
    logps = _random_logps(b=2, k=2, seed=4, requires_grad=True, mask=mask)
    out = loss(logps, 0.1)
    assert out.per_prompt_loss[1] == 0
    assert out.loss.item() == pytest.approx(out.per_prompt_loss[0].item(), rel=1e-12)
    out.loss.backward()
    assert logps.policy_chosen.grad[1] == 0

    none = _random_logps(b=2, k=2, seed=4, requires_grad=True,
                         mask=torch.zeros(2, 2, dtype=torch.bool))
    out = loss(none, 0.1)
    out.loss.backward()
    assert out.loss.item() == 0 and torch.isfinite(none.policy_rejected.grad).all()
    assert math.isnan(out.stats()["rewards/margins"])


@pytest.mark.parametrize("loss", ALL_LOSSES, ids=lambda m: repr(m))
def test_flat_mean_weighs_each_prompt_by_its_pairs(loss):
    mask = torch.tensor([[True, True, True], [True, False, False], [False, False, False]])
    logps = _random_logps(b=3, k=3, seed=7, mask=mask)
    beta = torch.full((3, 3), 0.3, dtype=torch.float64)
    by_prompt = loss(logps, beta)
    flat = loss(logps, beta, flat_mean_over=4.0)
    per_prompt = by_prompt.per_prompt_loss
    assert flat.loss.item() == pytest.approx(
        (3 * per_prompt[0] + per_prompt[1]).item() / 4, rel=1e-12)
    # over twice the pairs: half the loss (β-DPO's micro-batch share of a step's flat mean)
    half = loss(logps, beta, flat_mean_over=8.0)
    assert half.loss.item() == pytest.approx(flat.loss.item() / 2, rel=1e-12)
    with pytest.raises(ValueError, match="flat_mean_over"):
        loss(logps, beta, flat_mean_over=0.0)


def test_flat_mean_of_dpo_is_the_mean_over_pairs():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    logps = _random_logps(b=2, k=3, seed=8, mask=mask)
    beta = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], dtype=torch.float64)
    out = DPOLoss()(logps, beta, flat_mean_over=3.0)
    pairs = -F.logsigmoid(out.margins[mask])
    assert out.loss.item() == pytest.approx(pairs.mean().item(), rel=1e-12)
    assert out.loss.item() != pytest.approx(DPOLoss()(logps, beta).loss.item(), rel=1e-3)


# ---------------------------------------------------------------- outputs


def test_stats_names_and_values():
    out = DPOLoss()(_tiny(), torch.tensor([[0.1, 0.5]], dtype=torch.float64))
    stats = out.stats()
    assert set(stats) == {"rewards/chosen", "rewards/rejected", "rewards/margins",
                          "rewards/accuracies", "logps/chosen", "logps/rejected",
                          "beta/mean", "beta/min", "beta/max"}
    assert all(isinstance(v, float) for v in stats.values())
    assert stats["rewards/accuracies"] == 1.0
    assert stats["rewards/margins"] == pytest.approx(0.225)
    assert stats["logps/rejected"] == pytest.approx(-7.5)
    assert isinstance(out, LossOutput)


def test_outputs_detached_except_losses():
    logps = _random_logps(b=3, k=2, seed=5, requires_grad=True)
    out = DPOLoss()(logps, 0.1)
    assert out.loss.requires_grad and out.per_prompt_loss.requires_grad
    for name in ("chosen_rewards", "rejected_rewards", "margins", "logratio_discrepancy",
                 "beta", "policy_chosen_logps", "policy_rejected_logps"):
        assert not getattr(out, name).requires_grad, name


def test_losses_are_modules_built_by_target():
    instantiate = pytest.importorskip("hydra.utils").instantiate
    loss = instantiate({"_target_": "eapo_exp.losses.IPOLoss", "tau": 0.3})
    assert isinstance(loss, PreferenceLoss) and isinstance(loss, torch.nn.Module)
    assert loss.tau == 0.3


# ---------------------------------------------------------------- SFT helpers


def test_response_nll():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, 2, 6, 0]])
    logp = torch.log_softmax(logits, dim=-1)
    # shift: logits at t predict label at t + 1
    pos = [(0, 1, 3), (0, 2, 4), (1, 0, 1), (1, 1, 2), (1, 2, 6), (1, 3, 0)]
    picked = [logp[b, t, y].item() for b, t, y in pos]
    assert response_nll(logits, labels).item() == pytest.approx(-sum(picked) / 6, rel=1e-6)
    flat = F.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1))
    assert response_nll(logits, labels).item() == pytest.approx(flat.item(), rel=1e-6)
