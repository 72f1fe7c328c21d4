"""From the language model's logits to per-token log-probs and entropies, in float32, optionally chunked.

A reply of T tokens over a vocabulary of V (about 152k for Qwen2.5-VL) is a (B, T, V) tensor; the
softmax of all of it at once can cost more memory than the model's activations, so both helpers accept
`chunk_size` (rows of the flattened (B*T, V) matrix handled at a time).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _rows(logits: Tensor, chunk_size: int | None):
    flat = logits.reshape(-1, logits.shape[-1])  # (B*T, V)
    step = flat.shape[0] if not chunk_size else chunk_size
    for start in range(0, max(flat.shape[0], 1), max(step, 1)):  # one empty chunk when B*T == 0
        yield start, flat[start:start + step].float()


def logprobs_from_logits(logits: Tensor, labels: Tensor, chunk_size: int | None = None) -> Tensor:
    """log softmax(logits)[label] per position: logits (B, T, V), labels (B, T) int -> (B, T) float32.

    Computed as logit[label] - logsumexp(logits), which never materialises the (B, T, V) log-softmax.
    """
    flat_labels = labels.reshape(-1, 1)  # (B*T, 1)
    parts = []
    for start, rows in _rows(logits, chunk_size):
        idx = flat_labels[start:start + rows.shape[0]]
        parts.append(rows.gather(-1, idx).squeeze(-1) - torch.logsumexp(rows, dim=-1))
    return torch.cat(parts).reshape(labels.shape)


def entropy_from_logits(logits: Tensor, chunk_size: int | None = None) -> Tensor:
    """Entropy of softmax(logits) per position: (B, T, V) -> (B, T) float32.

    H = logsumexp(z) - sum_v softmax(z)_v * z_v, which equals -sum_v p_v log p_v without taking log 0;
    logits of -inf (masked vocabulary entries) contribute 0.
    """
    parts = []
    for _, rows in _rows(logits, chunk_size):
        p = torch.softmax(rows, dim=-1)
        finite = torch.where(p > 0, rows, torch.zeros((), device=rows.device))  # -inf logits: 0 * 0, no NaN
        parts.append(torch.logsumexp(rows, dim=-1) - (p * finite).sum(dim=-1))
    return torch.cat(parts).reshape(logits.shape[:-1])
