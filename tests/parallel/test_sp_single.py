"""In-process tests of the SP entry point: SP=1 matches the model, the Ulysses patch leaves ordinary
forward passes unchanged, chunked log-probs match, and bad configurations are refused early."""

from __future__ import annotations

import pytest
import torch
from sp_tiny_model import make_batch, masked_nll, reference_logprobs, tiny_model

from lvr_trainer.parallel import (GridLayout, ProcessGrid, enable_ulysses, single_process_grid,
                                  sp_forward_logprobs, token_logprobs)

SPECS = [(6, (2, 4, 6), 11), (3, (2, 4, 4), 6)]


@pytest.fixture(scope="module")
def model_and_batch():
    model = tiny_model()
    return model, make_batch(model, SPECS, seed=1)


def _sp1(model, batch, **kw):
    return sp_forward_logprobs(model, batch["inputs_embeds"], batch["position_ids"], batch["target_ids"],
                               batch["attention_mask"], single_process_grid(), **kw)


def test_sp1_matches_the_model_and_has_gradients(model_and_batch):
    model, batch = model_and_batch
    ref = reference_logprobs(model, batch)
    lp = _sp1(model, batch)
    assert lp.shape == batch["input_ids"].shape and lp.dtype == torch.float32
    assert (lp - ref)[batch["valid"]].abs().max() <= 1e-5
    masked_nll(lp, batch["valid"]).backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_ulysses_patch_leaves_plain_forward_unchanged(model_and_batch):
    model = tiny_model()
    batch = make_batch(model, SPECS, seed=1)
    before = reference_logprobs(model, batch)
    name = enable_ulysses(model)
    assert name == "lvr_ulysses_sdpa" and model.model.language_model.config._attn_implementation == name
    assert enable_ulysses(model) == name                                      # idempotent
    assert model.model.visual.config._attn_implementation == "sdpa"           # vision tower untouched
    after = reference_logprobs(model, batch)
    assert torch.equal(before, after)


def test_chunked_logprobs_match_unchunked():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(2, 13, 8, requires_grad=True)
    targets = torch.randint(0, 50, (2, 13))
    targets[0, 3] = -100
    whole = token_logprobs(hidden, head, targets, temperature=0.7, chunk_size=100)
    chunked = token_logprobs(hidden, head, targets, temperature=0.7, chunk_size=4)
    assert torch.allclose(whole, chunked, atol=1e-6)
    g_whole = torch.autograd.grad(whole.sum(), [hidden, head.weight])
    g_chunk = torch.autograd.grad(chunked.sum(), [hidden, head.weight])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_whole, g_chunk))
    expected = (head(hidden) / 0.7).log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    expected = expected.masked_fill(targets < 0, 0.0)      # an ignored target is not scored: 0
    assert torch.allclose(whole, expected, atol=1e-6)


def test_heads_not_divisible_by_sp_is_refused_before_any_communication(model_and_batch):
    model, batch = model_and_batch  # 4 heads
    grid = ProcessGrid(rank=0, layout=GridLayout(world_size=3, sp_size=3, dp_size=1))
    with pytest.raises(ValueError, match="sequence_parallel=3 must divide the model's attention heads \\(4\\)"):
        _sp1_grid = sp_forward_logprobs(model, batch["inputs_embeds"], batch["position_ids"],  # noqa: F841
                                        batch["target_ids"], batch["attention_mask"], grid)


def test_bad_position_ids_shape_is_refused(model_and_batch):
    model, batch = model_and_batch
    with pytest.raises(ValueError, match="position_ids must be \\(3, B, T\\)"):
        sp_forward_logprobs(model, batch["inputs_embeds"], batch["position_ids"][:, :, :-1],
                            batch["target_ids"], batch["attention_mask"])


def test_gradients_are_reduced_in_bounded_buckets_in_order():
    import torch

    from lvr_trainer.parallel.sp_forward import _buckets

    grads = [torch.zeros(n) for n in (10, 20, 5, 40, 3)] + [torch.zeros(4, dtype=torch.float64)]
    buckets = _buckets(grads, max_bytes=30 * 4)
    assert [[t.numel() for t in b] for b in buckets] == [[10, 20], [5], [40], [3], [4]]
    assert [t for b in buckets for t in b] == grads                       # every gradient once, in order
