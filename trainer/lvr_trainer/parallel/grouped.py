"""Grouped (shared-prefix) attention without a T x T mask: memory linear in the row's length.

A packed row is [prefix | segment 1 | segment 2 | ... | padding] (`train.packing`): the prefix (the video
prompt) is causal as usual, each segment (one reply) sees the whole prefix and itself causally, never another
segment. Written as attention calls, exactly:

    prefix queries     over prefix keys                      causal
    segment i queries  over [prefix keys ; segment i keys]   causal aligned to the lower right
                                                             (query t of the segment sees every prefix key
                                                             and the segment's keys up to t)

`torch.nn.attention.bias.causal_lower_right` states the second without materialising a mask on GPUs (SDPA's
fused kernels take it as a flag, forward and backward); on CPU SDPA builds it per segment, (L_i, P + L_i),
never (T, T). Only the layout is kept: a few integers per row (`SegmentLayout.nbytes`). The rollout's decode steps use the
same idea (`SharedPrefixDecode`): G samples of a prompt attend to one copy of its prefix in the KV cache. Inside Ulysses every
rank holds all positions for its heads, so the same layout applies to each rank's heads; GQA is kept (key and
value heads are not repeated). Padding queries get zeros (nothing scores them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SegmentLayout:
    """Per row: (prefix length, segment lengths); `length`: the rows' (padded) length T."""

    rows: tuple[tuple[int, tuple[int, ...]], ...]
    length: int

    @classmethod
    def from_segments(cls, segments: torch.Tensor) -> SegmentLayout:
        """From segment ids `(R, T)` (0 prefix, k >= 1 the k-th segment, -1 padding; contiguous, padding last)."""
        rows = []
        for row in segments.tolist():
            real = [s for s in row if s >= 0]
            if any(s < 0 for s in row[:len(real)]):
                raise ValueError("a packed row's padding must come after its segments (right padding)")
            counts: dict[int, int] = {}
            for prev, s in zip([0, *real], real):
                if s < prev:
                    raise ValueError("a packed row must be [prefix | segment 1 | segment 2 | ...] in order")
                counts[s] = counts.get(s, 0) + 1
            rows.append((counts.pop(0, 0), tuple(counts[k] for k in sorted(counts))))
        return cls(tuple(rows), segments.shape[-1])

    def padded(self, length: int) -> SegmentLayout:
        """The same rows in a longer padded length (sequence parallelism pads T to a multiple of SP)."""
        if length < self.length:
            raise ValueError(f"cannot pad a layout of length {self.length} to {length}")
        return SegmentLayout(self.rows, length)

    def nbytes(self) -> int:
        """Bytes of the structure itself: a prefix length and a length per segment, 8 bytes each."""
        return 8 * sum(1 + len(segs) for _, segs in self.rows)


def grouped_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layout: SegmentLayout,
                      scale: float | None = None, dropout: float = 0.0) -> torch.Tensor:
    """query `(R, Hq, T, D)`, key/value `(R, Hkv, T, D)` -> `(R, Hq, T, D)`, equal to SDPA with the dense
    grouped mask (`tests`: `grouped_causal_mask`), built from per-segment SDPA calls."""
    from torch.nn.attention.bias import causal_lower_right

    rows, length = query.shape[0], query.shape[2]
    if rows != len(layout.rows) or length != layout.length:
        raise ValueError(f"attention over {rows} rows of {length} positions, layout of {len(layout.rows)} x "
                         f"{layout.length}")
    gqa = query.shape[1] != key.shape[1]
    device = query.device.type
    if torch.is_autocast_enabled(device):
        # what autocast does for SDPA, done here: the causal bias dispatches to the kernels directly, and under
        # bf16 autocast the rotary embedding leaves q and k in float32 while v is bf16
        dtype = torch.get_autocast_dtype(device)
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    out = []
    for r, (prefix, segments) in enumerate(layout.rows):
        q, k, v = query[r:r + 1], key[r:r + 1], value[r:r + 1]
        parts = []
        if prefix:
            parts.append(F.scaled_dot_product_attention(q[:, :, :prefix], k[:, :, :prefix], v[:, :, :prefix],
                                                        is_causal=True, scale=scale, dropout_p=dropout,
                                                        enable_gqa=gqa))
        at = prefix
        for size in segments:
            keys = torch.cat([k[:, :, :prefix], k[:, :, at:at + size]], dim=2)       # (1, Hkv, P + L, D)
            values = torch.cat([v[:, :, :prefix], v[:, :, at:at + size]], dim=2)
            parts.append(F.scaled_dot_product_attention(q[:, :, at:at + size], keys, values,
                                                        attn_mask=causal_lower_right(size, prefix + size),
                                                        scale=scale, dropout_p=dropout, enable_gqa=gqa))
            at += size
        if at < length:
            parts.append(q.new_zeros(1, q.shape[1], length - at, q.shape[3]))
        out.append(torch.cat(parts, dim=2))
    return torch.cat(out, dim=0)


@dataclass(frozen=True)
class SharedPrefixDecode:
    """Stands in for the attention mask of a decode step of `samples` replies per row that share the row's
    prompt in one KV cache. The cache holds [prompt (S positions, left-padded) | step 0's n tokens | step 1's n
    tokens | ...]; sample i's query sees the prompt's real tokens and its own earlier tokens, never another
    sample's. `prompt_mask` (R, S): True at the prompt's real tokens."""

    prompt_mask: torch.Tensor
    samples: int


def shared_prefix_decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                   step: SharedPrefixDecode, scale: float | None = None) -> torch.Tensor:
    """query `(R, Hq, n, D)` (this step's token of each of the n samples), key/value `(R, Hkv, L, D)` (the
    cache, this step included) -> `(R, Hq, n, D)`. One SDPA call: the query heads that share a key/value head
    are stacked as extra queries (no key/value copy), the mask is (R, 1, queries, L) booleans."""
    rows, heads, n, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    rep, prompt = heads // kv_heads, step.prompt_mask.shape[1]
    if n != step.samples or (length - prompt) % n:
        raise ValueError(f"a shared-prefix decode step of {step.samples} samples got {n} queries over {length} keys")
    owner = torch.arange(length - prompt, device=query.device) % n                       # sample of each reply key
    own = owner[None, :] == torch.arange(n, device=query.device)[:, None]                 # (n, L - S)
    allowed = torch.cat([step.prompt_mask[:, None, :].expand(rows, n, prompt).to(torch.bool),
                         own[None].expand(rows, n, length - prompt)], dim=-1)              # (R, n, L)
    mask = allowed[:, None, None].expand(rows, 1, rep, n, length).reshape(rows, 1, rep * n, length)
    grouped = query.reshape(rows, kv_heads, rep * n, dim)         # query head h uses key/value head h // rep
    out = F.scaled_dot_product_attention(grouped, key, value, attn_mask=mask, scale=scale)
    return out.reshape(rows, heads, n, dim)
