"""Masked reductions and the logits helpers (log-probs, entropy), against hand values and torch references."""

from __future__ import annotations

import math

import pytest
import torch

from lvr_trainer.algo.logits import entropy_from_logits, logprobs_from_logits
from lvr_trainer.algo.masked import masked_count, masked_mean, masked_sum, masked_var

X = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("inf"), 6.0]])
M = torch.tensor([[1, 1, 0], [1, 0, 1]])


def test_masked_sum_mean_count_ignore_nan_and_inf_in_padding():
    assert masked_sum(X, M).item() == 13.0
    assert masked_count(M).item() == 4.0
    assert masked_mean(X, M).item() == pytest.approx(3.25)
    assert masked_sum(X, M, dim=-1).tolist() == [3.0, 10.0]
    assert masked_mean(X, M, dim=-1).tolist() == [1.5, 5.0]
    assert masked_mean(X, M.bool(), dim=0).tolist() == [2.5, 2.0, 6.0]


def test_masked_mean_broadcast_mask():
    x = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    assert masked_mean(x, torch.tensor([[1], [0]])).item() == 2.0  # (B, 1) mask over (B, T)


def test_empty_mask_gives_zero_and_finite_gradients():
    x = torch.tensor([[1.0, 2.0]], requires_grad=True)
    out = masked_mean(x, torch.zeros(1, 2))
    out.backward()
    assert out.item() == 0.0 and x.grad.tolist() == [[0.0, 0.0]]


def test_masked_var():
    # kept values 1, 2, 4, 6: mean 3.25, squared deviations 5.0625 + 1.5625 + 0.5625 + 7.5625 = 14.75
    assert masked_var(X, M).item() == pytest.approx(14.75 / 3)
    assert masked_var(X, M, unbiased=False).item() == pytest.approx(14.75 / 4)
    assert masked_var(X, torch.tensor([[1, 0, 0], [0, 0, 0]])).item() == 0.0


def test_logprobs_from_logits_by_hand_and_against_log_softmax():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, -math.inf, 0.0]]])  # (1, 2, 4)
    lp = logprobs_from_logits(logits, torch.tensor([[2, 0]]))
    assert lp.tolist()[0] == pytest.approx([math.log(0.25), math.log(3 / 5)])
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=gen) * 4
    labels = torch.randint(0, 11, (3, 5), generator=gen)
    ref = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(logprobs_from_logits(logits, labels), ref, atol=1e-5)
    assert torch.allclose(logprobs_from_logits(logits, labels, chunk_size=4), ref, atol=1e-5)


def test_logprobs_from_logits_upcasts_and_keeps_gradients():
    logits = torch.randn(2, 3, 7, dtype=torch.bfloat16, requires_grad=True)
    lp = logprobs_from_logits(logits, torch.zeros(2, 3, dtype=torch.long), chunk_size=2)
    assert lp.dtype == torch.float32 and lp.shape == (2, 3)
    lp.sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad.float()).all()


def test_entropy_from_logits_by_hand_and_against_categorical():
    logits = torch.tensor([[[0.0] * 8, [0.0, -math.inf, -math.inf, -math.inf, -math.inf, -math.inf, -math.inf,
                                        -math.inf]]])
    h = entropy_from_logits(logits)
    assert h.tolist()[0] == pytest.approx([math.log(8), 0.0])  # uniform: log V; one-hot (other logits -inf): 0
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, 13, generator=gen) * 3
    ref = torch.distributions.Categorical(logits=logits).entropy()
    assert torch.allclose(entropy_from_logits(logits), ref, atol=1e-5)
    assert torch.allclose(entropy_from_logits(logits, chunk_size=5), ref, atol=1e-5)
    assert entropy_from_logits(torch.zeros(0, 3, 5)).shape == (0, 3)


def test_entropy_gradient_is_finite_with_masked_vocabulary():
    logits = torch.tensor([[[1.0, 2.0, -math.inf]]], requires_grad=True)
    entropy_from_logits(logits).sum().backward()
    assert torch.isfinite(logits.grad).all()
