"""Tiny preset model and tokenizer, built once per session (fp32, CPU, one thread)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lvr_trainer.config import ModelConfig

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer) of the `tiny` preset with the tiny built tokenizer."""
    from lvr_trainer.model.loading import load_model

    return load_model(ModelConfig(preset="tiny"))


@pytest.fixture(scope="session")
def qwen_tokenizer():
    from lvr_trainer.model.tokenizer import load_tokenizer

    return load_tokenizer("qwen")


@pytest.fixture()
def frames():
    """8 frames of 112x112 random RGB: grid (4, 8, 8), 64 video tokens."""
    return np.random.default_rng(0).integers(0, 256, size=(8, 112, 112, 3), dtype=np.uint8)
