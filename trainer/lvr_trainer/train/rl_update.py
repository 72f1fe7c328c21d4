"""GRPO's scoring and update phases: old and reference log-probs by prefill over the sampled replies
(cached video embeddings spliced in, no vision pass), then PPO mini-batch updates with the clipped
policy loss plus kl_coef x the KL loss against the frozen reference.

Shapes as in `rl_rollout`: each `MicroBatch` holds B replies padded to S positions; `mask` (B, S) marks
the positions whose next token is a reply token, so every loss reduces over reply tokens only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lvr_trainer.algo.grpo import kl_loss, policy_loss
from lvr_trainer.algo.kinds import LossAgg
from lvr_trainer.algo.masked import masked_mean
from lvr_trainer.config import GRPOConfig
from lvr_trainer.model.modes import evaluating
from lvr_trainer.parallel.grid import ProcessGrid
from lvr_trainer.parallel.collectives import all_reduce_sum
from lvr_trainer.train.metrics import Metrics
from lvr_trainer.train.rl_rollout import MicroBatch
from lvr_trainer.train.logprobs import response_logprobs


@torch.no_grad()
def prefill_logprobs(model, micros: list[MicroBatch], grid: ProcessGrid, temperature: float,
                     field: str, autocast: Callable) -> None:
    """Fill `micro.<field>` (B, S) with `model`'s log-probs of each next token at `temperature`, the
    same function (and numerics) the update uses, so ratios start at exactly 1."""
    with evaluating(model):
        for mb in micros:
            with autocast():
                setattr(mb, field, response_logprobs(model, mb.batch, grid, temperature).float())


def prefill_metrics(micros: list[MicroBatch]) -> dict[str, float]:
    """Entropy (Monte-Carlo: mean -log pi_old(sampled token)), engine-vs-prefill log-prob gap, and the
    reference KL (k3) of the replies when a reference was scored."""
    mask = torch.cat([m.mask.flatten() for m in micros])
    old = torch.cat([m.old_logprobs.flatten() for m in micros])
    eng = torch.cat([m.rollout_logprobs.flatten() for m in micros])
    out = {"actor/entropy": float(masked_mean(-old, mask)),
           "rollout/logprob_gap": float(masked_mean((eng - old).abs(), mask))}
    if micros[0].ref_logprobs is not None:
        ref = torch.cat([m.ref_logprobs.flatten() for m in micros])
        log_r = ref - old
        out["actor/ref_kl"] = float(masked_mean(log_r.exp() - log_r - 1, mask))
    return out


def _micro_weight(mb: MicroBatch, agg: LossAgg, tokens: float, seqs: float) -> float:
    """Weight of a micro-batch's loss in its mini-batch, so the sum equals `agg` over the mini-batch:
    token-mean weighs by reply tokens, the sequence means by replies."""
    if agg == LossAgg.token_mean:
        return float(mb.mask.sum()) / max(tokens, 1.0)
    return float((mb.mask.sum(-1) > 0).sum()) / max(seqs, 1.0)


def _totals(mini: list[MicroBatch], grid: ProcessGrid, device) -> tuple[float, float]:
    """(reply tokens, non-empty replies) of a mini-batch over all DP ranks."""
    tokens = float(sum(m.mask.sum() for m in mini))
    seqs = float(sum((m.mask.sum(-1) > 0).sum() for m in mini))
    if grid.dp_size > 1:
        tokens = all_reduce_sum(tokens, device, grid.dp_group)
        seqs = all_reduce_sum(seqs, device, grid.dp_group)
    return tokens, seqs


def micro_loss(model, mb: MicroBatch, cfg: GRPOConfig, grid: ProcessGrid, autocast: Callable
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """policy_loss(new, old, A) + kl_coef * kl_loss(new, ref) on one micro-batch -> (loss, metrics)."""
    with autocast():
        new = response_logprobs(model, mb.batch, grid, cfg.temperature).float()     # (B, S)
    loss, metrics = policy_loss(new, mb.old_logprobs, mb.advantages, mb.mask, cfg.clip_low, cfg.clip_high,
                                cfg.dual_clip, cfg.loss_agg)
    if cfg.kl_coef > 0:
        kl, kl_metrics = kl_loss(new, mb.ref_logprobs, mb.mask, cfg.kl_kind, cfg.loss_agg)
        loss = loss + cfg.kl_coef * kl
        metrics.update(kl_metrics)
    metrics["actor/loss"] = float(loss.detach())
    return loss, metrics


def ppo_update(model, micros: list[MicroBatch], cfg: GRPOConfig, grid: ProcessGrid, finish: Callable[[], float],
               autocast: Callable, device) -> dict[str, float]:
    """`cfg.ppo_epochs` passes over the rollout batch, each split into `cfg.mini_batches` optimizer steps
    of whole micro-batches (old log-probs stay those of rollout time). `finish()` reduces gradients,
    clips, steps the optimizer and returns the gradient norm. Returns the metrics' means."""
    if len(micros) % cfg.mini_batches:
        raise ValueError(f"{len(micros)} micro-batches per rank cannot be split into rl.mini_batches="
                         f"{cfg.mini_batches} mini-batches: set train.grad_accum to a multiple of rl.mini_batches")
    per_mini = len(micros) // cfg.mini_batches
    acc = Metrics()
    for _ in range(cfg.ppo_epochs):
        for k in range(cfg.mini_batches):
            mini = micros[k * per_mini:(k + 1) * per_mini]
            tokens, seqs = _totals(mini, grid, device)
            for mb in mini:
                loss, metrics = micro_loss(model, mb, cfg, grid, autocast)
                # DP ranks average gradients: scale by dp_size so the step's loss is over all ranks' replies.
                (loss * _micro_weight(mb, LossAgg(cfg.loss_agg), tokens, seqs) * grid.dp_size).backward()
                for key, value in metrics.items():
                    acc.add(key, value, weight=float(mb.mask.sum()))
            acc.add("actor/grad_norm", finish())
    return acc.pop()
