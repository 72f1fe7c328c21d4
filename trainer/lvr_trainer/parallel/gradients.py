"""Gradient clipping over a model whose gradients are whole (DDP) or sharded (FSDP DTensors)."""

from __future__ import annotations

import torch

from lvr_trainer.parallel.grid import ProcessGrid


def clip_grad_norm(model: torch.nn.Module, max_norm: float | None, grid: ProcessGrid) -> float:
    """Clip all gradients to a global L2 norm (after they are reduced); returns the norm before clipping.

    Whole gradients (DDP) are the same on every rank; sharded ones (FSDP DTensors) give their norm as a
    partial result that DTensor reduces over the mesh. Foreach kernels, one host sync for the whole model."""
    local, sharded = [], []
    for p in model.parameters():
        if p.grad is not None:
            (sharded if hasattr(p.grad, "placements") else local).append(p.grad)
    squares = torch.zeros((), dtype=torch.float64, device=grid.device)
    if local:
        squares = squares + torch.nn.utils.get_total_norm(local).double().pow(2)
    if sharded:
        total = torch.nn.utils.get_total_norm(sharded)
        squares = squares + (total.full_tensor() if hasattr(total, "full_tensor") else total).double().pow(2)
    norm = float(squares.sqrt())
    if max_norm is not None and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        if local:
            torch._foreach_mul_(local, scale)
        for g in sharded:
            g.mul_(scale)
    return norm
