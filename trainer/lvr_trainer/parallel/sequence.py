"""Pure helpers that pad a sequence to a multiple of SP and cut it into equal per-rank shards.

All of them work on any dimension (`dim`), so the same calls shard `inputs_embeds (B, T, H)`,
`target_ids (B, T)` and mRoPE `position_ids (3, B, T)`. No torch.distributed here.

    T = 10, SP = 4  ->  padded T' = 12, shards [0:3) [3:6) [6:9) [9:12); rank 3 holds 1 real token.
"""

from __future__ import annotations

import torch


def padded_length(length: int, sp_size: int) -> int:
    """Smallest multiple of `sp_size` that is >= `length`."""
    if sp_size < 1:
        raise ValueError(f"sp_size must be >= 1, got {sp_size}")
    return -(-length // sp_size) * sp_size


def shard_bounds(padded_len: int, sp_size: int, sp_rank: int) -> tuple[int, int]:
    """`[start, end)` of rank `sp_rank`'s shard of a sequence already padded to `padded_len`."""
    if padded_len % sp_size != 0:
        raise ValueError(f"length {padded_len} is not a multiple of sp_size {sp_size}; pad it first")
    if not 0 <= sp_rank < sp_size:
        raise ValueError(f"sp_rank {sp_rank} outside [0, {sp_size})")
    local = padded_len // sp_size
    return sp_rank * local, (sp_rank + 1) * local


def pad_to_multiple(x: torch.Tensor, sp_size: int, dim: int = 1, value: float | int = 0) -> torch.Tensor:
    """Right-pad `x` along `dim` with `value` to a multiple of `sp_size` (returns `x` itself if it is one)."""
    length = x.shape[dim]
    extra = padded_length(length, sp_size) - length
    if extra == 0:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x, x.new_full(shape, value)], dim=dim)


def split_for_rank(x: torch.Tensor, sp_size: int, sp_rank: int, dim: int = 1) -> torch.Tensor:
    """This rank's shard of `x` (already padded) along `dim`: a view, so autograd routes gradients back."""
    start, end = shard_bounds(x.shape[dim], sp_size, sp_rank)
    return x.narrow(dim, start, end - start)


def pad_and_split(x: torch.Tensor, sp_size: int, sp_rank: int, dim: int = 1, value: float | int = 0) -> torch.Tensor:
    """`split_for_rank(pad_to_multiple(x))`: the shard rank `sp_rank` computes on."""
    return split_for_rank(pad_to_multiple(x, sp_size, dim, value), sp_size, sp_rank, dim)


def unpad(x: torch.Tensor, length: int, dim: int = 1) -> torch.Tensor:
    """Drop the SP padding again: the first `length` entries along `dim`."""
    return x.narrow(dim, 0, length)


def is_right_padded(attention_mask: torch.Tensor) -> bool:
    """True when every row of `attention_mask (B, T)` is ones then zeros (no holes, no left padding).

    Right padding needs no explicit mask under causal attention: real queries never see the pads.
    """
    mask = attention_mask.bool()
    # non-increasing along T  <=>  no 0 followed by a 1
    return not bool((~mask[:, :-1] & mask[:, 1:]).any())


def causal_padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Boolean SDPA mask `(B, 1, T, T)`, True = may attend: causal AND key is a real token.

    A query with no visible key (a left pad) attends to itself instead, so no row is all-False
    (all-False rows give NaN in softmax and then NaN gradients); its output is never used.
    """
    length = attention_mask.shape[-1]
    keys = attention_mask.bool()[:, None, None, :]                                  # (B, 1, 1, T)
    causal = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
    return _no_empty_rows(causal & keys)                                             # (B, 1, T, T)


def _no_empty_rows(allowed: torch.Tensor) -> torch.Tensor:
    """A query row with no visible key attends to itself (all-False rows give NaN in softmax, then NaN
    gradients); such rows are padding, their outputs never used."""
    eye = torch.eye(allowed.shape[-1], dtype=torch.bool, device=allowed.device)
    return allowed | (eye & ~allowed.any(-1, keepdim=True))
