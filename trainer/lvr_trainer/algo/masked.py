"""Masked reductions over padded (B, T) batches: the building blocks of every token-level loss.

`mask` is bool or 0/1 of the same shape as `values` (or broadcastable to it); 1 marks a real response
token. Masked-out positions are excluded with `torch.where`, so NaN or inf there never leak into the
result (they must still be finite if gradients flow through an `exp` before the mask is applied).
An empty mask gives 0, not NaN, so a micro-batch without response tokens contributes no gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """sum(values[mask]) over `dim` (all dims when None). values, mask: (B, T) -> () or reduced shape."""
    kept = torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device))
    return kept.sum() if dim is None else kept.sum(dim=dim)


def masked_count(mask: Tensor, dim: int | None = None) -> Tensor:
    """Number of kept positions (float), over `dim` or all dims."""
    m = mask.bool().float()
    return m.sum() if dim is None else m.sum(dim=dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """mean(values[mask]) over `dim` (all when None); 0 where nothing is kept. (B, T) -> () or reduced."""
    count = masked_count(torch.broadcast_to(mask, values.shape), dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1.0)


def masked_var(values: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of values[mask] over all positions (Bessel-corrected when `unbiased`); 0 for < 2 kept."""
    mean = masked_mean(values, mask)
    count = masked_count(torch.broadcast_to(mask, values.shape))
    sq = masked_sum((values - mean) ** 2, mask)
    denom = count - 1.0 if unbiased else count
    return torch.where(denom > 0, sq / denom.clamp(min=1.0), torch.zeros_like(sq))
