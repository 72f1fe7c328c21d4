"""Grouped (shared-prefix) attention from the segment layout equals SDPA with the dense grouped mask —
outputs and every gradient, with GQA, rows of different layouts and padding — and its structure stays a few
bytes at the paper's scale (270k tokens, G = 8), where the dense mask would be 68 GiB per row."""

from __future__ import annotations

import pytest
import torch

from lvr_trainer.parallel.grouped import SegmentLayout, grouped_attention

from .test_packing import grouped_causal_mask


@pytest.mark.parametrize("segments", [
    [[0, 0, 0, 1, 1, 2, 2, 2, -1, -1], [0, 0, 1, 1, 1, 1, 2, 3, 3, -1]],     # two rows, padding, 3 segments
    [[0, 1, 1, 1, 2, 2, 3, 4, 4, 4]],                                           # one-token prefix, no padding
    [[0, 0, 0, 0, 0, 0, 0, 0, 1, 1]],                                           # a lone reply
])
def test_grouped_attention_equals_the_dense_mask_with_gradients(segments):
    torch.manual_seed(0)
    seg = torch.tensor(segments)
    rows, length = seg.shape
    q = torch.randn(rows, 4, length, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(rows, 2, length, 8, dtype=torch.float64, requires_grad=True)     # GQA: 4 query heads, 2 kv
    v = torch.randn(rows, 2, length, 8, dtype=torch.float64, requires_grad=True)
    real = (seg >= 0)[:, None, :, None]
    out = grouped_attention(q, k, v, SegmentLayout.from_segments(seg), scale=0.3)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=grouped_causal_mask(seg),
                                                           scale=0.3, enable_gqa=True)
    assert torch.allclose(out * real, ref * real, atol=1e-12)
    weights = torch.randn_like(out)                       # any loss over the real positions
    got = torch.autograd.grad((out * real * weights).sum(), (q, k, v))
    want = torch.autograd.grad((ref * real * weights).sum(), (q, k, v))
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-12)


def test_the_layout_is_bytes_not_a_mask_at_270k_tokens_and_g8():
    prompt, reply, g = 262_144, 1_024, 8                   # 3,600 frames' prompt + 8 replies of 1k tokens
    layout = SegmentLayout(((prompt, (reply,) * g),), prompt + g * reply)
    assert layout.length > 270_000 and layout.nbytes() < 64 * 2 ** 20
    assert layout.nbytes() == 72 and layout.length ** 2 > 68 * 2 ** 30     # vs a dense boolean mask per row


def test_a_layout_refuses_rows_out_of_order():
    with pytest.raises(ValueError, match="right padding"):
        SegmentLayout.from_segments(torch.tensor([[0, -1, 1]]))
    with pytest.raises(ValueError, match="in order"):
        SegmentLayout.from_segments(torch.tensor([[0, 2, 1]]))


def test_grouped_attention_under_bf16_autocast_takes_mixed_dtypes_like_sdpa():
    """Under bf16 autocast the rotary embedding leaves q and k in float32 and v in bf16: the grouped path casts
    as autocast casts SDPA's inputs, and agrees with the dense mask to bf16 rounding."""
    torch.manual_seed(0)
    seg = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, -1, -1]])
    q, k = torch.randn(1, 4, 10, 8), torch.randn(1, 2, 10, 8)
    v = torch.randn(1, 2, 10, 8).to(torch.bfloat16)
    real = (seg >= 0)[:, None, :, None]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = grouped_attention(q, k, v, SegmentLayout.from_segments(seg))
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=grouped_causal_mask(seg),
                                                               enable_gqa=True)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert torch.allclose((out * real).float(), (ref * real).float(), atol=2e-2)
