"""Shared by the loop tests: a tiny synthetic dataset and a tiny-preset trainer config."""

from __future__ import annotations

import pytest

from lvr_trainer.config import TrainerConfig
from lvr_trainer.data.synth import SynthSpec, synthesise


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """6 videos of 8 s at 4 fps, 56x56 (24 questions); returns the dataset directory."""
    out = tmp_path_factory.mktemp("tiny-data")
    synthesise(out, SynthSpec(videos=6, seconds=8, fps=4, width=56, height=56, seed=5))
    return out


def tiny_config(data_dir, out_dir, **sections) -> TrainerConfig:
    """A tiny-preset config on `data_dir`'s train split, writing to `out_dir`; `sections` override."""
    raw = {
        "model": {"preset": "tiny", "tokenizer": "tiny"},
        "data": {"train": str(data_dir / "train.jsonl"), "val": str(data_dir / "val.jsonl"),
                 "sampling": {"num_frames": 8, "max_pixels": 3136, "min_pixels": 784}},
        "train": {"steps": 4, "batch_size": 2, "bf16": False, "torch_threads": 1},
        "optim": {"lr": 1e-2, "warmup_steps": 1},
        "cache": {"uri": str(out_dir / "cache")},
        "output": {"dir": str(out_dir / "run"), "tensorboard": False},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return TrainerConfig.model_validate(raw)


@pytest.fixture()
def make_config(tiny_data, tmp_path):
    return lambda **sections: tiny_config(tiny_data, tmp_path, **sections)


def checkpoint_weights(model_dir) -> dict:
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(str(model_dir)).state_dict()


@pytest.fixture()
def assert_same_update(make_config):
    """Check that two runs' final weights agree up to float summation order.

    Adam divides by sqrt(v), which magnifies rounding on near-zero gradients, so bit equality is not
    expected; a wrong gradient reduction (sum instead of mean, or none) differs by the size of the
    update itself. Tolerance: 2% of the largest update from the shared initial weights.
    """
    import torch

    from lvr_trainer.model.loading import load_policy

    def check(dir_one, dir_two) -> tuple[float, float]:
        w1, w2 = checkpoint_weights(dir_one), checkpoint_weights(dir_two)
        assert w1.keys() == w2.keys()
        initial, _, _ = load_policy(make_config().model, torch.device("cpu"))
        w0 = initial.state_dict()
        update = max((w1[k] - w0[k]).abs().max().item() for k in w1)
        worst = max((w1[k] - w2[k]).abs().max().item() for k in w1)
        assert update > 0 and worst < 0.02 * update, (worst, update)
        return worst, update
    return check
