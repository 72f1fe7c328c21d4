"""GRPO advantages, KL penalties, loss aggregation and the clipped policy loss, against hand-computed values
and slow python-loop references."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from lvr_trainer.algo.grpo import (
    ADVANTAGES, AGGREGATIONS, KL_PENALTIES, agg_loss, group_advantages, group_mean_advantages, kl_loss,
    kl_penalty, policy_loss,
)
from lvr_trainer.algo.kinds import AdvantageKind, KLKind, LossAgg

LN2 = math.log(2.0)


# ----- advantages ---------------------------------------------------------------------------------------

def test_group_advantages_by_hand():
    # [1, 0, 0, 1]: mean 0.5, unbiased std sqrt((4 * 0.25) / 3) = 0.57735 -> +-0.5 / 0.57735 = +-0.866025
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4)
    assert adv.tolist() == pytest.approx([0.866025, -0.866025, -0.866025, 0.866025], abs=1e-5)
    # [1, 0, 0, 0]: mean 0.25, var (0.5625 + 3 * 0.0625) / 3 = 0.25, std 0.5 -> [1.5, -0.5, -0.5, -0.5]
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4)
    assert adv.tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5], abs=1e-5)


def test_group_advantages_groups_are_independent_and_flat_groups_get_zero():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.1, 0.1, 0.1, 0.1])
    adv = group_advantages(r, 4)
    assert adv[:4].tolist() == pytest.approx([0.866025, -0.866025, -0.866025, 0.866025], abs=1e-5)
    assert adv[4:].tolist() == [0.0] * 8  # exactly 0, also for 0.1 whose float mean is not exactly 0.1


def test_group_advantages_edge_cases():
    assert group_advantages(torch.tensor([3.0, 1.0]), 1).tolist() == [0.0, 0.0]  # a group of one: no signal
    assert group_advantages(torch.tensor([1, 0, 1, 1]), 2).dtype == torch.float32  # int rewards accepted
    with pytest.raises(ValueError, match="cannot be split into groups of 4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 4), 4)


def test_group_advantages_match_a_python_reference():
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 3, (48,), generator=gen).float() / 2  # many ties, some flat groups
    eps = 1e-6
    expected = []
    for g in range(0, 48, 6):
        grp = rewards[g:g + 6].tolist()
        mean, std = statistics.fmean(grp), statistics.stdev(grp)
        expected += [0.0 if std == 0 else (x - mean) / (std + eps) for x in grp]
    assert group_advantages(rewards, 6, eps).tolist() == pytest.approx(expected, abs=1e-5)


def test_dr_grpo_advantages():
    adv = group_mean_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0]), 2)
    assert adv.tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0, 0.0, 0.0])
    assert ADVANTAGES[AdvantageKind("dr_grpo")] is group_mean_advantages
    assert ADVANTAGES[AdvantageKind.grpo] is group_advantages


# ----- KL -----------------------------------------------------------------------------------------------

def test_kl_penalties_by_hand():
    # pi = 0.5, pi_ref = 0.25 (first) and pi = 0.25, pi_ref = 0.5 (second)
    logp = torch.tensor([[math.log(0.5), math.log(0.25)]])
    ref = torch.tensor([[math.log(0.25), math.log(0.5)]])
    assert kl_penalty(logp, ref, "k1").tolist()[0] == pytest.approx([LN2, -LN2])
    assert kl_penalty(logp, ref, "abs").tolist()[0] == pytest.approx([LN2, LN2])
    assert kl_penalty(logp, ref, "mse").tolist()[0] == pytest.approx([0.5 * LN2**2] * 2)  # 0.2402265
    # k3 = r - log r - 1 with r = pi_ref / pi: 0.5 + ln2 - 1 = 0.193147; 2 - ln2 - 1 = 0.306853
    assert kl_penalty(logp, ref, KLKind.low_var_kl).tolist()[0] == pytest.approx([0.193147, 0.306853], abs=1e-6)


def test_k3_is_clamped_to_ten_with_finite_gradients():
    logp = torch.tensor([0.0, -30.0, -5.0, 0.0, -100.0], requires_grad=True)
    ref = torch.tensor([-30.0, 0.0, 0.0, -5.0, 0.0])
    kl = kl_penalty(logp, ref, "low_var_kl")
    # log r = -30 -> clamped to -20 -> 19.0 -> 10; log r = 30 -> huge -> 10; log r = 5 -> e^5 - 6 = 142.4 -> 10;
    # log r = -5 -> e^-5 + 5 - 1 = 4.006738 (inside the clamp); log r = 100 -> 10
    assert kl.tolist() == pytest.approx([10.0, 10.0, 10.0, 4.006738, 10.0], abs=1e-6)
    kl.sum().backward()
    assert torch.isfinite(logp.grad).all()
    assert logp.grad.tolist()[:3] == [0.0, 0.0, 0.0]  # clamped: no gradient
    assert logp.grad[3].item() == pytest.approx(1.0 - math.exp(-5.0), abs=1e-6)  # d/dlogp (r - log r - 1) = 1 - r


def test_k1_and_k3_are_unbiased_estimates_of_kl():
    """Exact expectation under pi over a categorical: E[k1] = E[k3] = KL(pi || ref) (Schulman 2020)."""
    pi = torch.tensor([0.5, 0.3, 0.15, 0.05])
    ref = torch.tensor([0.25, 0.25, 0.25, 0.25])
    exact = (pi * (pi / ref).log()).sum().item()
    for kind in ("k1", "low_var_kl"):
        est = (pi * kl_penalty(pi.log(), ref.log(), kind)).sum().item()
        assert est == pytest.approx(exact, abs=1e-6), kind
    assert set(KL_PENALTIES) == set(KLKind)


def test_kl_errors_and_kl_loss():
    with pytest.raises(ValueError, match="unknown KL kind 'k4'; use one of k1, abs, mse, low_var_kl"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k4")
    logp = torch.tensor([[math.log(0.5), 0.0], [math.log(0.25), 0.0]])
    ref = torch.tensor([[math.log(0.25), 5.0], [math.log(0.5), 5.0]])
    mask = torch.tensor([[1, 0], [1, 0]])
    loss, metrics = kl_loss(logp, ref, mask, "k1", "token-mean")
    assert loss.item() == pytest.approx(0.0, abs=1e-7)  # ln2 and -ln2; the padded 5.0s are ignored
    assert metrics == {"actor/kl_loss": pytest.approx(0.0, abs=1e-7)}


# ----- aggregation --------------------------------------------------------------------------------------

NAN = float("nan")
LOSSES = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, NAN, NAN], [9.0, 9.0, 9.0, 9.0]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize("agg, expected", [
    ("token-mean", 21 / 6),  # (1+2+3+4+5+6) / 6 = 3.5
    ("seq-mean-token-mean", (2.5 + 5.5) / 2),  # 4.0; the empty third row is left out
    ("seq-mean-token-sum", (10 + 11) / 2),  # 10.5
])
def test_agg_loss_on_a_ragged_mask(agg, expected):
    assert agg_loss(LOSSES, MASK, agg).item() == pytest.approx(expected)
    assert agg_loss(LOSSES, MASK.bool(), LossAgg(agg)).item() == pytest.approx(expected)


def test_agg_loss_gradients_weigh_tokens_as_documented():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 0.0, 0.0]], requires_grad=True)
    mask = MASK[:2]
    agg_loss(x, mask, "token-mean").backward()
    assert torch.allclose(x.grad, torch.tensor([[1 / 6] * 4, [1 / 6, 1 / 6, 0, 0]]))
    x.grad = None
    agg_loss(x, mask, "seq-mean-token-mean").backward()
    assert torch.allclose(x.grad, torch.tensor([[1 / 8] * 4, [1 / 4, 1 / 4, 0, 0]]))
    x.grad = None
    agg_loss(x, mask, "seq-mean-token-sum").backward()
    assert torch.allclose(x.grad, torch.tensor([[1 / 2] * 4, [1 / 2, 1 / 2, 0, 0]]))


def test_agg_loss_empty_mask_is_zero_and_unknown_mode_errors():
    for agg in LossAgg:
        assert agg_loss(torch.ones(2, 3), torch.zeros(2, 3), agg).item() == 0.0
    assert set(AGGREGATIONS) == set(LossAgg)
    with pytest.raises(ValueError, match="unknown loss aggregation 'mean'"):
        agg_loss(torch.ones(1, 1), torch.ones(1, 1), "mean")


# ----- policy loss --------------------------------------------------------------------------------------

def _one_token(ratio: float, adv: float, **kw):
    logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss, metrics = policy_loss(logp, torch.zeros(1, 1), torch.tensor([adv]), torch.ones(1, 1), **kw)
    loss.backward()
    return loss.item(), logp.grad.item(), metrics


def test_positive_advantage_ratio_above_clip_high_is_clipped():
    loss, grad, m = _one_token(1.5, 1.0)  # 1.5 > 1 + 0.3: max(-1.5, -1.3) = -1.3, no gradient
    assert loss == pytest.approx(-1.3)
    assert grad == 0.0
    assert m["actor/pg_clipfrac"] == 1.0 and m["actor/pg_clipfrac_lower"] == 0.0
    assert m["actor/ppo_kl"] == pytest.approx(-math.log(1.5))  # -0.405465
    assert m["actor/approx_kl"] == pytest.approx(0.5 - math.log(1.5))  # 0.094535


def test_positive_advantage_inside_the_range_keeps_the_gradient():
    loss, grad, m = _one_token(1.2, 1.0)
    assert loss == pytest.approx(-1.2)
    assert grad == pytest.approx(-1.2)  # d(-A exp(logp - old)) / dlogp = -A r
    assert m["actor/pg_clipfrac"] == 0.0


def test_clip_range_is_asymmetric():
    assert _one_token(1.25, 1.0)[0] == pytest.approx(-1.25)  # clip_high 0.3 lets 1.25 through
    assert _one_token(1.25, 1.0, clip_high=0.2)[0] == pytest.approx(-1.2)
    assert _one_token(0.7, -1.0)[0] == pytest.approx(0.8)  # clip_low 0.2: max(0.7, 0.8)
    assert _one_token(0.5, 1.0)[0] == pytest.approx(-0.5)  # pessimistic: unclipped -0.5 > clipped -0.8


def test_negative_advantage_below_clip_low():
    loss, grad, m = _one_token(0.5, -1.0)  # max(0.5, 0.8) = 0.8, no gradient
    assert loss == pytest.approx(0.8) and grad == 0.0
    assert m["actor/pg_clipfrac"] == 1.0 and m["actor/pg_clipfrac_lower"] == 0.0


def test_dual_clip_bounds_a_negative_advantage_loss():
    loss, grad, m = _one_token(5.0, -2.0)  # unclipped 10 > clipped 2.6; dual bound 3 * |-2| = 6
    assert loss == pytest.approx(6.0) and grad == 0.0
    assert m["actor/pg_clipfrac_lower"] == 1.0 and m["actor/pg_clipfrac"] == 0.0
    loss, grad, _ = _one_token(5.0, -2.0, dual_clip=None)
    assert loss == pytest.approx(10.0) and grad == pytest.approx(10.0)
    loss, _, m = _one_token(2.0, -2.0)  # 4 < 6: dual-clip inactive
    assert loss == pytest.approx(4.0) and m["actor/pg_clipfrac_lower"] == 0.0
    assert _one_token(50.0, 1.0)[0] == pytest.approx(-1.3)  # dual-clip never touches A > 0


def test_policy_loss_rejects_bad_clips():
    args = (torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1))
    with pytest.raises(ValueError, match="dual_clip=1.0 must be > 1"):
        policy_loss(*args, dual_clip=1.0)
    with pytest.raises(ValueError, match="clip_low=1.0 must be in"):
        policy_loss(*args, clip_low=1.0)
    with pytest.raises(ValueError, match="clip_high=-0.1"):
        policy_loss(*args, clip_high=-0.1)


def _reference_token_loss(lp, old, a, cl, ch, dc):
    r = math.exp(max(-20.0, min(20.0, lp - old)))
    loss = max(-a * r, -a * min(max(r, 1 - cl), 1 + ch))
    if dc is not None and a < 0:
        loss = min(loss, -a * dc)
    return loss


def _reference_policy_loss(logp, old, adv, mask, cl, ch, dc, agg):
    per_seq, total, count = [], 0.0, 0
    for i in range(len(logp)):
        toks = [_reference_token_loss(logp[i][t], old[i][t], adv[i], cl, ch, dc)
                for t in range(len(logp[i])) if mask[i][t]]
        total, count = total + sum(toks), count + len(toks)
        if toks:
            per_seq.append(sum(toks) / len(toks) if agg == "seq-mean-token-mean" else sum(toks))
    if agg == "token-mean":
        return total / count
    return sum(per_seq) / len(per_seq)


@pytest.mark.parametrize("agg", [a.value for a in LossAgg])
@pytest.mark.parametrize("clips", [(0.2, 0.3, 3.0), (0.2, 0.2, None), (0.1, 0.28, 1.5)])
def test_policy_loss_matches_a_python_loop_reference(agg, clips):
    gen = torch.Generator().manual_seed(1)
    b, t = 6, 9
    old = -torch.rand(b, t, generator=gen) * 3
    logp = old + torch.randn(b, t, generator=gen)  # ratios from ~0.1 to ~10: every branch is hit
    adv = torch.randn(b, generator=gen)
    lengths = torch.tensor([9, 1, 5, 3, 9, 7])
    mask = torch.arange(t)[None, :] < lengths[:, None]
    loss, metrics = policy_loss(logp, old, adv, mask, *clips, agg=agg)
    expected = _reference_policy_loss(logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), *clips, agg)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert metrics["actor/pg_loss"] == pytest.approx(expected, rel=1e-5)
    assert 0.0 < metrics["actor/pg_clipfrac"] < 1.0
    if clips[2] is not None:
        assert metrics["actor/pg_clipfrac_lower"] > 0.0  # the dual-clip branch is exercised too


def test_policy_loss_per_token_advantages_and_padding():
    logp = torch.tensor([[0.0, math.log(1.5), -math.inf]])
    old = torch.tensor([[0.0, 0.0, 0.0]])
    adv = torch.tensor([[1.0, 1.0, 7.0]])  # (B, T) advantages
    mask = torch.tensor([[True, True, False]])
    loss, m = policy_loss(logp, old, adv, mask)
    assert loss.item() == pytest.approx((-1.0 - 1.3) / 2)  # the -inf pad changes nothing
    assert m["actor/pg_clipfrac"] == pytest.approx(0.5)


def test_policy_gradient_at_the_old_policy_is_minus_advantage_over_tokens():
    """At r = 1 nothing is clipped and d loss / d logp_t = -A_i / (kept tokens) under token-mean."""
    logp = torch.zeros(2, 3, requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    loss, m = policy_loss(logp, torch.zeros(2, 3), torch.tensor([2.0, -1.0]), mask)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-0.5, -0.5, -0.5], [0.25, 0.0, 0.0]]))
    assert m["actor/ppo_kl"] == 0.0 and m["actor/approx_kl"] == 0.0 and m["actor/pg_clipfrac"] == 0.0
