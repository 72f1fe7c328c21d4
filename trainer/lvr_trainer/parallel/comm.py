"""Autograd-aware collectives over the SP group: the Ulysses all-to-all and a sequence all-gather.

Ulysses (Jacobs et al., 2023, "DeepSpeed Ulysses", arXiv:2309.14509): before attention each rank
holds all heads of `T / SP` positions; one all-to-all turns that into `H / SP` heads of all `T`
positions, attention runs locally per head, and the inverse all-to-all turns it back.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from . import collectives


def _all_to_all(x: torch.Tensor, group, scatter_dim: int, gather_dim: int) -> torch.Tensor:
    """Cut `x` into W chunks along `scatter_dim`, send chunk j to rank j, concatenate what arrives
    (in rank order) along `gather_dim`. Shape: scatter_dim shrinks W-fold, gather_dim grows W-fold."""
    world = dist.get_world_size(group)
    send = torch.stack([c.contiguous() for c in x.chunk(world, dim=scatter_dim)])    # (W, ...chunk)
    recv = torch.empty_like(send)
    collectives.all_to_all_single(recv, send, group=group)
    return torch.cat(recv.unbind(0), dim=gather_dim)


class _AllToAll(torch.autograd.Function):
    """Forward: all-to-all (scatter s, gather g). Backward: the inverse all-to-all (scatter g, gather s)."""

    @staticmethod
    def forward(ctx, x, group, scatter_dim: int, gather_dim: int):
        ctx.group, ctx.scatter_dim, ctx.gather_dim = group, scatter_dim, gather_dim
        return _all_to_all(x, group, scatter_dim, gather_dim)

    @staticmethod
    def backward(ctx, grad):
        return _all_to_all(grad, ctx.group, ctx.gather_dim, ctx.scatter_dim), None, None, None


def all_to_all(x: torch.Tensor, group, scatter_dim: int, gather_dim: int) -> torch.Tensor:
    """Differentiable all-to-all over `group`; the identity when the group has one rank.

    Sequence -> heads: `(B, H, T/W, D)` with scatter_dim=1, gather_dim=2 gives `(B, H/W, T, D)`.
    Heads -> sequence: scatter_dim=2, gather_dim=1 undoes it.
    """
    if group is None or dist.get_world_size(group) == 1:
        return x
    if x.shape[scatter_dim] % dist.get_world_size(group) != 0:
        raise ValueError(f"all_to_all: dim {scatter_dim} of shape {tuple(x.shape)} does not divide "
                         f"over {dist.get_world_size(group)} ranks")
    return _AllToAll.apply(x, group, scatter_dim, gather_dim)


class _GatherSequence(torch.autograd.Function):
    """Forward: all-gather equal shards and concatenate along `dim`.
    Backward: this rank's slice of the incoming gradient. Every rank computes the same loss from the
    gathered tensor, so that slice is exactly d(loss)/d(local shard) - no sum over ranks."""

    @staticmethod
    def forward(ctx, x, group, dim: int):
        ctx.group, ctx.dim = group, dim
        world = dist.get_world_size(group)
        parts = [torch.empty_like(x) for _ in range(world)]
        collectives.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad):
        world, rank = dist.get_world_size(ctx.group), dist.get_rank(ctx.group)
        return grad.chunk(world, dim=ctx.dim)[rank].contiguous(), None, None


def gather_sequence(x: torch.Tensor, group, dim: int = 1) -> torch.Tensor:
    """Differentiable all-gather of equal sequence shards: `(B, T/W)` -> `(B, T)` on every rank."""
    if group is None or dist.get_world_size(group) == 1:
        return x
    return _GatherSequence.apply(x, group, dim)


def all_gather_rows(x: torch.Tensor, counts: list[int], group) -> torch.Tensor:
    """All-gather `(count_r, ...)` tensors of known per-rank counts, concatenated in rank order (no autograd:
    `gather_rows` is the differentiable form)."""
    width = max(counts)
    padded = x.new_zeros((width, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in counts]
    collectives.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([p[:n] for p, n in zip(parts, counts)], dim=0)


class _GatherRows(torch.autograd.Function):
    """Forward: all-gather uneven row blocks. Backward: this rank's rows of the gradient, summed over the ranks
    (`summed`: each rank used a different part of the gathered rows) or its own (every rank used all of them
    the same way, as `_GatherSequence`)."""

    @staticmethod
    def forward(ctx, x, counts, group, summed: bool):
        ctx.counts, ctx.group, ctx.summed = counts, group, summed
        return all_gather_rows(x, counts, group)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        if ctx.summed:
            grad = grad.clone()
            collectives.all_reduce(grad, group=ctx.group)
        start = sum(ctx.counts[:dist.get_rank(ctx.group)])
        return grad[start:start + ctx.counts[dist.get_rank(ctx.group)]], None, None, None


def gather_rows(x: torch.Tensor, counts: list[int], group, *, summed: bool) -> torch.Tensor:
    """Differentiable all-gather of `(count_r, ...)` rows from every rank of `group` (see `_GatherRows`)."""
    return _GatherRows.apply(x, counts, group, summed)
