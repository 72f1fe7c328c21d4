"""Switching a model to eval mode for generation or scoring, and back to whatever it was."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`with evaluating(model):` runs in eval mode (no dropout) and restores the previous mode on exit,
    also on error, so a loop's validation or rollout never leaves its policy in the wrong mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
