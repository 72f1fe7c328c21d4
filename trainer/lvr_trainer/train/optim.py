"""AdamW with linear warmup then cosine decay to a floor, and the optimizer step the loops take."""

from __future__ import annotations

import math

import torch

from lvr_trainer.config import OptimConfig, TrainerConfig
from lvr_trainer.parallel.gradients import clip_grad_norm
from lvr_trainer.parallel.grid import ProcessGrid
from lvr_trainer.parallel.sp_forward import reduce_gradients
from lvr_trainer.parallel.timeouts import explain_timeout


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warmup to 1 over
    `warmup_steps`, then cosine from 1 down to `min_ratio` at `total_steps`."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, total_steps: int):
    """(AdamW over trainable parameters, LambdaLR schedule). Norms and biases get no weight decay.

    The step never builds whole-model temporaries: fused kernels on GPUs (one launch per group, no
    intermediates), one parameter at a time elsewhere (torch's default `foreach` would materialise
    intermediates the size of every parameter of a group at once)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    on_gpu = all(p.is_cuda for g in groups for p in g["params"]) and any(g["params"] for g in groups)
    kernel = {"fused": True} if on_gpu else {"foreach": False}
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, **kernel)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, cfg.warmup_steps, cfg.min_lr_ratio))
    return optimizer, schedule


def finish_step(model, optimizer, scheduler, grid: ProcessGrid, cfg: TrainerConfig) -> float:
    """Reduce gradients over ranks, clip, AdamW step, schedule step; returns the pre-clip grad norm."""
    with explain_timeout("reducing gradients"):
        reduce_gradients(model, grid)
        norm = clip_grad_norm(model, cfg.optim.grad_clip, grid)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norm
