"""GRPO: group-normalised advantages, KL penalties against a reference policy, the clipped policy loss.

Group Relative Policy Optimization (Shao et al. 2024, "DeepSeekMath", arXiv:2402.03300, Sec. 4.1) samples
G replies per prompt and uses each reply's reward, normalised within its group, as the advantage of all its
tokens; no value model. The loss is PPO's clipped surrogate (Schulman et al. 2017, arXiv:1707.06347) with
an asymmetric clip range ("clip-higher", DAPO, Yu et al. 2025, arXiv:2503.14476) and dual-clip for
negative advantages (Ye et al. 2020, arXiv:1912.09729), plus a KL term against the frozen reference.

Shapes: B replies (= prompts x G, each group of G consecutive), T response tokens (padded), `mask` (B, T)
bool or 0/1 marking real tokens. Variants are selected by the `str` Enums of `lvr_trainer.algo.kinds`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lvr_trainer.algo.kinds import AdvantageKind, KLKind, LossAgg
from lvr_trainer.algo.logits import entropy_from_logits, logprobs_from_logits
from lvr_trainer.algo.masked import masked_count, masked_mean, masked_sum, masked_var

__all__ = [
    "ADVANTAGES", "AGGREGATIONS", "KL_PENALTIES", "agg_loss", "entropy_from_logits", "group_advantages",
    "group_mean_advantages", "kl_loss", "kl_penalty", "logprobs_from_logits", "masked_count", "masked_mean",
    "masked_sum", "masked_var", "policy_loss",
]

LOG_RATIO_CLAMP = 20.0  # |log pi/pi_old| beyond this is treated as this: exp(20) ~ 4.9e8, finite in fp32
K3_CLAMP = 10.0


# ----- advantages ---------------------------------------------------------------------------------------

def _groups(rewards: Tensor, group_size: int) -> Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (one per reply), got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards cannot be split into groups of {group_size}; the batch must "
                         "hold whole groups of G consecutive replies per prompt")
    return rewards.float().view(-1, group_size)  # (N/G, G)


def group_advantages(rewards: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """GRPO outcome advantages: A_i = (r_i - mean(r_group)) / (std(r_group) + eps).

    rewards: (N,) with N = prompts x group_size, each group consecutive. Returns (N,) float32.
    std is torch's default (unbiased, Bessel-corrected). A group whose rewards are all equal (including a
    group of one) carries no signal and gets exactly 0 (DeepSeekMath, arXiv:2402.03300, eq. 3 / Sec. 4.1.2).
    """
    g = _groups(rewards, group_size)  # (P, G)
    flat = (g == g[:, :1]).all(dim=1, keepdim=True)  # (P, 1) zero-variance groups
    std = g.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(g[:, :1])
    adv = (g - g.mean(dim=1, keepdim=True)) / (std + eps)
    return torch.where(flat, torch.zeros_like(adv), adv).view(-1)


def group_mean_advantages(rewards: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """Dr. GRPO advantages (Liu et al. 2025, arXiv:2503.20783): A_i = r_i - mean(r_group), no std division.

    rewards: (N,) -> (N,) float32. `eps` is unused; it keeps the advantage-function signature.
    """
    g = _groups(rewards, group_size)
    return (g - g.mean(dim=1, keepdim=True)).view(-1)


ADVANTAGES: dict[AdvantageKind, Callable[[Tensor, int, float], Tensor]] = {
    AdvantageKind.grpo: group_advantages,
    AdvantageKind.dr_grpo: group_mean_advantages,
}


# ----- KL to the reference policy ------------------------------------------------------------------------

def _kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    return logprobs - ref_logprobs


def _kl_abs(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    return (logprobs - ref_logprobs).abs()


def _kl_mse(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    return 0.5 * (logprobs - ref_logprobs).square()


def _kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    log_r = (ref_logprobs - logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # only avoids inf; see doc
    return (log_r.exp() - log_r - 1.0).clamp(-K3_CLAMP, K3_CLAMP)


KL_PENALTIES: dict[KLKind, Callable[[Tensor, Tensor], Tensor]] = {
    KLKind.k1: _kl_k1,
    KLKind.abs: _kl_abs,
    KLKind.mse: _kl_mse,
    KLKind.low_var_kl: _kl_k3,
}


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: KLKind | str = KLKind.low_var_kl) -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi. (B, T), (B, T) -> (B, T).

    With log r = log pi_ref - log pi (Schulman 2020, "Approximating KL Divergence", estimators k1-k3):
    `k1`: -log r = log pi - log pi_ref (unbiased, can be negative); `abs`: |k1|; `mse`: k2 = 0.5 k1^2;
    `low_var_kl`: k3 = r - log r - 1 (unbiased, >= 0, low variance; the GRPO paper's eq. 4), clamped to
    [-10, 10]. log r is first clamped to [-20, 20]: k3 there is already beyond 10 (so the value is
    unchanged) and exp stays finite, so gradients cannot turn into inf * 0 = NaN.
    Padded positions must hold finite numbers; reduce with a mask (`agg_loss`).
    """
    try:
        fn = KL_PENALTIES[KLKind(kind)]
    except ValueError:
        raise ValueError(f"unknown KL kind {kind!r}; use one of {', '.join(k.value for k in KLKind)}") from None
    return fn(logprobs, ref_logprobs)


# ----- loss aggregation ----------------------------------------------------------------------------------

def _token_mean(losses: Tensor, mask: Tensor) -> Tensor:
    return masked_mean(losses, mask)


def _seq_mean(per_seq: Tensor, counts: Tensor) -> Tensor:
    present = counts > 0  # (B,) sequences with at least one token
    return masked_sum(per_seq, present) / masked_count(present).clamp(min=1.0)


def _seq_mean_token_mean(losses: Tensor, mask: Tensor) -> Tensor:
    counts = masked_count(mask, dim=-1)  # (B,)
    return _seq_mean(masked_sum(losses, mask, dim=-1) / counts.clamp(min=1.0), counts)


def _seq_mean_token_sum(losses: Tensor, mask: Tensor) -> Tensor:
    return _seq_mean(masked_sum(losses, mask, dim=-1), masked_count(mask, dim=-1))


AGGREGATIONS: dict[LossAgg, Callable[[Tensor, Tensor], Tensor]] = {
    LossAgg.token_mean: _token_mean,
    LossAgg.seq_mean_token_mean: _seq_mean_token_mean,
    LossAgg.seq_mean_token_sum: _seq_mean_token_sum,
}


def agg_loss(losses: Tensor, mask: Tensor, agg: LossAgg | str = LossAgg.token_mean) -> Tensor:
    """Reduce per-token losses (B, T) under mask (B, T) to a scalar.

    `token-mean`: sum over all kept tokens / their count (every token weighs the same; DAPO's choice).
    `seq-mean-token-mean`: mean over each reply's tokens, then over replies (GRPO paper, eq. 3).
    `seq-mean-token-sum`: sum over each reply's tokens, then mean over replies.
    Replies without kept tokens are left out of the mean over replies; an all-empty mask gives 0.
    Note: with gradient accumulation, the mean of micro-batch `token-mean`s is not the token mean of the
    whole batch; the loop must weight micro-batches by their token counts when that matters.
    """
    try:
        fn = AGGREGATIONS[LossAgg(agg)]
    except ValueError:
        raise ValueError(f"unknown loss aggregation {agg!r}; use one of "
                         f"{', '.join(a.value for a in LossAgg)}") from None
    return fn(losses, mask)


def kl_loss(
    logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor,
    kind: KLKind | str = KLKind.low_var_kl, agg: LossAgg | str = LossAgg.token_mean,
) -> tuple[Tensor, dict[str, float]]:
    """The KL term to add (times kl_coef) to the policy loss: agg_loss(kl_penalty(...), mask, agg).

    logprobs, ref_logprobs, mask: (B, T). Returns (scalar loss, {"actor/kl_loss": value}).
    """
    loss = agg_loss(kl_penalty(logprobs, ref_logprobs, kind), mask, agg)
    return loss, {"actor/kl_loss": loss.item()}


# ----- policy loss ---------------------------------------------------------------------------------------

def _check_clip(clip_low: float, clip_high: float, dual_clip: float | None) -> None:
    if not 0.0 <= clip_low < 1.0:
        raise ValueError(f"clip_low={clip_low} must be in [0, 1): the ratio's lower bound is 1 - clip_low")
    if clip_high < 0.0:
        raise ValueError(f"clip_high={clip_high} must be >= 0: the ratio's upper bound is 1 + clip_high")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip={dual_clip} must be > 1 (it bounds the loss at dual_clip * |A|); "
                         "use None to disable it")


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.3,
    dual_clip: float | None = 3.0,
    agg: LossAgg | str = LossAgg.token_mean,
) -> tuple[Tensor, dict[str, float]]:
    """PPO/GRPO clipped surrogate with asymmetric clip and dual-clip. Returns (scalar loss, metrics).

    logprobs (B, T) of the policy being trained (with grad); old_logprobs (B, T) of the policy that sampled
    the replies (no grad); advantages (B,) per reply or (B, T) per token; mask (B, T).
    Per token, with r = exp(logprobs - old_logprobs) (log-ratio clamped to [-20, 20]):
        l = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))          (PPO, clip-higher)
        l = min(l, -A dual_clip)   where A < 0                           (dual-clip: l <= dual_clip |A|)
    then `agg_loss(l, mask, agg)`.
    Metrics: `actor/pg_loss`; `actor/pg_clipfrac` (share of tokens where the clipped term is the active
    one, i.e. gradient cut by the trust region); `actor/pg_clipfrac_lower` (share where dual-clip bounds a
    negative-advantage token); `actor/ppo_kl` = mean(old - new log-prob) (k1 estimate of KL(old || new));
    `actor/approx_kl` = mean((r - 1) - log r) (k3, >= 0). All are means over kept tokens.
    """
    _check_clip(clip_low, clip_high, dual_clip)
    keep = mask.bool()
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages  # (B, 1) or (B, T)
    log_ratio = (logprobs - old_logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    log_ratio = torch.where(keep, log_ratio, torch.zeros_like(log_ratio))  # padding: r = 1, no NaN
    ratio = log_ratio.exp()  # (B, T)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    losses = torch.maximum(unclipped, clipped)  # (B, T)
    dual_active = torch.zeros_like(keep)
    if dual_clip is not None:
        bound = -adv * dual_clip  # = dual_clip * |A| where A < 0
        dual_active = (adv < 0) & (losses > bound)
        losses = torch.where(adv < 0, torch.minimum(losses, bound), losses)
    loss = agg_loss(losses, keep, agg)
    with torch.no_grad():
        metrics = {
            "actor/pg_loss": loss.item(),
            "actor/pg_clipfrac": masked_mean((clipped > unclipped).float(), keep).item(),
            "actor/pg_clipfrac_lower": masked_mean(dual_active.float(), keep).item(),
            "actor/ppo_kl": masked_mean(-log_ratio, keep).item(),
            "actor/approx_kl": masked_mean(ratio - 1.0 - log_ratio, keep).item(),
        }
    return loss, metrics
