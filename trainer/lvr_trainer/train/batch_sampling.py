"""Which records an optimizer step reads (a pure function of seed and step), and this rank's micro-batches
of them."""

from __future__ import annotations

import torch


def global_indices(num_records: int, seed: int, step: int, global_batch: int) -> list[int]:
    """Record indices of optimizer step `step`: consecutive slices of per-epoch permutations.

    Pure in (seed, step), so a resumed run sees exactly the data the uninterrupted run would.
    """
    out = []
    for pos in range(step * global_batch, (step + 1) * global_batch):
        epoch, offset = divmod(pos, num_records)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        out.append(int(torch.randperm(num_records, generator=g)[offset]))
    return out


def rank_micro_batches(indices: list[int], batch_size: int, grad_accum: int, dp_size: int,
                       dp_rank: int) -> list[list[int]]:
    """Split a global batch (grad_accum x dp_size x batch_size) into this DP rank's micro-batches."""
    per_micro = batch_size * dp_size
    return [indices[m * per_micro + dp_rank * batch_size: m * per_micro + (dp_rank + 1) * batch_size]
            for m in range(grad_accum)]
