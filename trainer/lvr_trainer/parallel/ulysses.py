"""Ulysses attention for the Qwen2-VL / Qwen2.5-VL language models, plugged into transformers'
attention interface (no model code copied).

The seam: `Qwen2_5_VLAttention.forward` projects q/k/v, applies mRoPE with the cos/sin the text
model computed from `position_ids`, then calls `ALL_ATTENTION_FUNCTIONS[config._attn_implementation]`
with the decoder's `attention_mask`. `enable_ulysses(model)` registers one function per inner kernel
(`lvr_ulysses_sdpa`, ...) and points the *text* config at it. That function dispatches on the mask:

* a normal mask (tensor or None) -> the inner kernel, unchanged: generate, eval, SP=1 all work as before;
* an `UlyssesContext` (what `sp_forward_logprobs` passes as the mask) -> all-to-all to head shards,
  attention over the whole padded sequence, inverse all-to-all back to sequence shards;
* a `SegmentLayout` (shared-prefix rows, one process) -> grouped attention (`parallel.grouped`), which a
  context may also carry; a `SharedPrefixDecode` (a rollout's decode step) -> the samples over one prefix.

Dispatching on an argument (not on global state) keeps gradient checkpointing correct: the
recomputation during backward receives the same `UlyssesContext` again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .comm import all_to_all
from .grouped import SegmentLayout, SharedPrefixDecode, grouped_attention, shared_prefix_decode_attention
from .grid import check_attention_heads

_PREFIX = "lvr_ulysses_"


@dataclass
class UlyssesContext:
    """Stands in for the attention mask in the SP forward.

    group: the SP process group (size W). kv_replicate: KV-head replication factor from
    `check_attention_heads`. mask: boolean `(B, 1, T, T)` over the *full padded* sequence
    (True = may attend), a `SegmentLayout` of shared-prefix rows (grouped attention), or None for plain
    causal attention (no padding, or right padding only).
    """

    group: Any
    kv_replicate: int = 1
    mask: torch.Tensor | SegmentLayout | None = None


def ulysses_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      ctx: UlyssesContext, scaling: float | None = None, dropout: float = 0.0) -> torch.Tensor:
    """Exact attention over the whole sequence from sequence shards.

    query `(B, Hq, T/W, D)`, key/value `(B, Hkv, T/W, D)` (mRoPE already applied with this shard's
    positions) -> output `(B, T/W, Hq, D)`, the layout transformers' attention functions return.
    """
    if ctx.kv_replicate > 1:  # GQA with Hkv not divisible by W: repeat each KV head r times
        key = key.repeat_interleave(ctx.kv_replicate, dim=1)
        value = value.repeat_interleave(ctx.kv_replicate, dim=1)
    q = all_to_all(query, ctx.group, scatter_dim=1, gather_dim=2)     # (B, Hq/W, T, D)
    k = all_to_all(key, ctx.group, scatter_dim=1, gather_dim=2)       # (B, Hkv'/W, T, D)
    v = all_to_all(value, ctx.group, scatter_dim=1, gather_dim=2)
    dropout = dropout if module.training else 0.0
    if isinstance(ctx.mask, SegmentLayout):
        out = grouped_attention(q, k, v, ctx.mask, scaling, dropout)                    # (B, Hq/W, T, D)
    else:
        out = F.scaled_dot_product_attention(                         # GQA kept: KV heads not repeated
            q, k, v, attn_mask=ctx.mask, is_causal=ctx.mask is None, scale=scaling,
            dropout_p=dropout, enable_gqa=q.shape[1] != k.shape[1])   # (B, Hq/W, T, D)
    out = all_to_all(out, ctx.group, scatter_dim=2, gather_dim=1)     # (B, Hq, T/W, D)
    return out.transpose(1, 2).contiguous()                           # (B, T/W, Hq, D)


def _make_dispatch(inner: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        if isinstance(attention_mask, UlyssesContext):
            return ulysses_attention(module, query, key, value, attention_mask, scaling, dropout), None
        if isinstance(attention_mask, SegmentLayout):
            out = grouped_attention(query, key, value, attention_mask, scaling, dropout if module.training else 0.0)
            return out.transpose(1, 2).contiguous(), None
        if isinstance(attention_mask, SharedPrefixDecode):
            out = shared_prefix_decode_attention(query, key, value, attention_mask, scaling)
            return out.transpose(1, 2).contiguous(), None
        inner_fn = ALL_ATTENTION_FUNCTIONS[inner]
        return inner_fn(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)

    attention.__name__ = f"{_PREFIX}{inner}"
    return attention


def _register(inner: str) -> str:
    """Register `lvr_ulysses_<inner>` as an attention function and mask builder; return its name."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    name = _PREFIX + inner
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _make_dispatch(inner))
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[inner])
    return name


def language_model_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """`(text decoder, lm_head)` of a Qwen2-VL / Qwen2.5-VL `...ForConditionalGeneration` model."""
    inner = getattr(model, "model", None)
    lm = getattr(inner, "language_model", None)
    head = getattr(model, "lm_head", None)
    if lm is None or head is None:
        raise TypeError(f"{type(model).__name__} is not a Qwen2-VL/Qwen2.5-VL ForConditionalGeneration model "
                        "(expected .model.language_model and .lm_head)")
    return lm, head


def enable_ulysses(model: torch.nn.Module) -> str:
    """Point the language model's attention at the Ulysses dispatcher (idempotent); return its name.

    Calls without an `UlyssesContext` behave exactly as before (they reach the original kernel).
    `eager` becomes `sdpa` (same maths); sliding-window layers are refused.
    """
    lm, _ = language_model_parts(model)
    config = lm.config
    current = config._attn_implementation or "sdpa"
    if current.startswith(_PREFIX):
        return current
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or []):
        raise ValueError("sequence parallelism supports full-attention layers only; this config has "
                         f"layer_types={sorted(set(config.layer_types))} (set use_sliding_window=False)")
    inner = "sdpa" if current == "eager" else current
    name = _register(inner)
    config._attn_implementation = name
    return name


def ulysses_context(model: torch.nn.Module, group, sp_size: int, mask: torch.Tensor | None) -> UlyssesContext:
    """Validate the model's heads against `sp_size` and build the context for one SP forward."""
    lm, _ = language_model_parts(model)
    replicate = check_attention_heads(lm.config.num_attention_heads, lm.config.num_key_value_heads, sp_size)
    return UlyssesContext(group=group, kv_replicate=replicate, mask=mask)
