"""Mixed precision as the field does it: float32 master weights and AdamW state, bf16 compute.

The defect this guards against: bf16 parameters stepped by plain AdamW. Adam's first update is about
lr x sign(grad) per element; at lr 1e-6 that is far below bf16's spacing near a weight of 0.02
(2^-13 ~ 1.2e-4) or 1.0 (2^-7), so the step rounds back to the old weight and nothing trains.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lvr_trainer.config import ConfigError, parse_config
from lvr_trainer.train.sft import run_sft
from lvr_trainer.model.loading import load_policy

# bf16-mixed vs fp32 SFT loss, relative, measured on the tiny preset (random init, 2 cores, torch 2.13):
# first step (same weights) 1.7e-6; over 6 steps at lr 1e-2, where the two runs' weights drift apart,
# at most 9.8e-4 (steps 1-4: 1.7e-6, 9.8e-4, 1.3e-4, 3.7e-4); at lr 1e-6 at most 1.3e-5. The bounds
# leave 5x or more room. (A random-init model's logits are near uniform, so a trained 7B model's gap
# is larger; these bounds catch a broken cast, not a model-quality question.)
FIRST_STEP_RTOL = 1e-4
BF16_LOSS_RTOL = 5e-3


def _stored_weights(checkpoint: str) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors as saved (their own dtype, no up-cast by a loader), under the module's
    state-dict names (the file keeps the older `model.layers.N` spelling of the decoder layers)."""
    from safetensors.torch import load_file

    stored = load_file(str(Path(checkpoint) / "model" / "model.safetensors"))
    return {k.replace("model.layers.", "model.language_model.layers.", 1): v for k, v in stored.items()}


def _changed_fraction(make_config, **sections) -> dict[str, float]:
    """Per decoder-layer tensor: the fraction of its elements that one AdamW step at lr 1e-6 changed,
    measured against the initial weights in the dtype the run kept them in."""
    cfg = make_config(train={"steps": 1, **sections.pop("train", {})},
                      optim={"lr": 1e-6, "warmup_steps": 0, "grad_clip": None}, **sections)
    initial, _, _ = load_policy(cfg.model.model_copy(update={"dtype": "float32"}), torch.device("cpu"))
    w0 = initial.state_dict()
    after = _stored_weights(run_sft(cfg)["checkpoint"])
    layers = [k for k in after if ".layers." in k and "visual" not in k]
    assert layers
    return {k: float((after[k] != w0[k].to(after[k].dtype)).float().mean()) for k in layers}


@pytest.mark.parametrize("settings", [
    {"train": {"bf16": None, "precision": "bf16-mixed"}},
    # the examples' GPU settings before train.precision existed: bf16 weights, bf16 autocast
    {"model": {"dtype": "bfloat16"}, "train": {"bf16": True}},
    {"train": {"bf16": None, "precision": "fp32"}},
], ids=["bf16-mixed", "old-bf16-settings", "fp32"])
def test_one_step_at_lr_1e6_changes_every_layer(make_config, settings):
    changed = _changed_fraction(make_config, **settings)
    stuck = {k: v for k, v in changed.items() if v < 0.5}
    assert not stuck, f"weights that one step at lr 1e-6 left (mostly) unchanged: {stuck}"


def test_bf16_mixed_loss_is_close_to_fp32(make_config, tmp_path):
    runs = {}
    for precision in ("fp32", "bf16-mixed"):
        cfg = make_config(train={"steps": 4, "bf16": None, "precision": precision},
                          optim={"lr": 1e-2, "warmup_steps": 0}, output={"dir": str(tmp_path / precision)})
        runs[precision] = run_sft(cfg)["losses"]
    fp32, mixed = runs["fp32"], runs["bf16-mixed"]
    rel = [abs(a - b) / a for a, b in zip(fp32, mixed)]
    assert fp32[0] != mixed[0], "bf16-mixed computed exactly the fp32 loss: autocast did not engage"
    assert rel[0] < FIRST_STEP_RTOL, rel
    assert max(rel) < BF16_LOSS_RTOL, rel


def test_bf16_mixed_keeps_float32_master_weights(make_config):
    """Trained weights and AdamW state float32; the frozen vision tower in model.dtype (bf16 under
    bf16-mixed: what `lvr encode` caches embeddings with, and no optimizer state to keep)."""
    from lvr_trainer.model.loading import vision_tower
    from lvr_trainer.train.run_start import start_run
    from lvr_trainer.train.optim import build_optimizer

    cfg = make_config(train={"bf16": None, "precision": "bf16-mixed"})
    assert cfg.model.dtype == "bfloat16"
    run = start_run(cfg, resume=False)
    lm = run.model.model.language_model
    assert {p.dtype for p in lm.parameters()} == {torch.float32}
    assert {p.dtype for p in vision_tower(run.model).parameters()} == {torch.bfloat16}
    optimizer, _ = build_optimizer(run.model, cfg.optim, 1)
    assert all(not p.requires_grad for p in vision_tower(run.model).parameters())
    assert {p.dtype for group in optimizer.param_groups for p in group["params"]} == {torch.float32}


BASE = {"model": {"preset": "tiny"}, "data": {"train": "train.jsonl"}}


@pytest.mark.parametrize("overrides,names", [
    ({"train": {"precision": "fp32", "bf16": True}}, ("'train'", "`bf16: true`", "precision: fp32", "remove `bf16`")),
    ({"train": {"precision": "bf16-mixed", "bf16": False}}, ("`bf16: false`", "remove `bf16`")),
    ({"model": {"preset": "tiny", "dtype": "bfloat16"}, "train": {"precision": "fp32"}},
     ("model.dtype bfloat16", "train.precision fp32", "set model.dtype to float32", "train.precision: bf16-mixed")),
    ({"model": {"preset": "tiny", "dtype": "float16"}}, ("model.dtype float16", "bfloat16 or float32")),
])
def test_contradictory_precision_settings_are_refused(overrides, names):
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, **overrides}, "job.yaml")
    assert "job.yaml" in str(info.value)
    for name in names:
        assert name in str(info.value), str(info.value)


@pytest.mark.parametrize("train,precision,dtype", [
    ({}, "bf16-mixed", "bfloat16"),             # the default
    ({"bf16": False}, "fp32", "float32"),       # the old spelling still means what it meant
    ({"bf16": True}, "bf16-mixed", "bfloat16"),
    ({"precision": "fp32"}, "fp32", "float32"),
])
def test_one_setting_decides_precision(train, precision, dtype):
    cfg = parse_config({**BASE, "train": train})
    assert cfg.train.precision.value == precision and cfg.model.dtype == dtype
