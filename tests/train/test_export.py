"""The model export of sharded checkpoints: Hugging Face safetensors in the training dtype, written one tensor
at a time; `from_pretrained` loads it, in one file or split over several with an index."""

from __future__ import annotations

import json

import pytest
import torch

from lvr_trainer.config import ModelConfig
from lvr_trainer.model.loading import load_model
from lvr_trainer.model.processor import VideoProcessor
from lvr_trainer.train import sharded_checkpoint
from lvr_trainer.train.sharded_checkpoint import export_model_dir


@pytest.mark.parametrize("shard_bytes", [2 * 1024 ** 3, 40_000])
def test_export_in_bf16_loads_with_from_pretrained(tmp_path, monkeypatch, shard_bytes):
    from transformers import AutoModelForImageTextToText

    monkeypatch.setattr(sharded_checkpoint, "EXPORT_SHARD_BYTES", shard_bytes)
    model, tokenizer = load_model(ModelConfig(preset="tiny", dtype="float32"))
    written = export_model_dir(model, tokenizer, VideoProcessor.from_model_config(model.config), tmp_path,
                               torch.bfloat16, write=True)
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    if shard_bytes < 1_000_000:                      # several files and an index naming every tensor
        assert len(files) > 2 and (tmp_path / "model.safetensors.index.json").is_file()
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"].values()) == set(files)
    else:
        assert files == ["model.safetensors"]
    loaded = AutoModelForImageTextToText.from_pretrained(str(tmp_path))
    assert loaded.dtype == torch.bfloat16
    expected = model.state_dict()
    got = loaded.state_dict()
    assert written == sum(p.numel() * 2 for p in model.parameters())            # the tied head once
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor.to(torch.bfloat16)), name
    # the published checkpoint names, as save_pretrained writes them (what vLLM and other readers expect)
    from safetensors import safe_open

    names = set()
    for f in tmp_path.glob("*.safetensors"):
        with safe_open(str(f), "pt") as handle:
            names |= set(handle.keys())
    model.save_pretrained(str(tmp_path / "reference"))
    with safe_open(str(tmp_path / "reference" / "model.safetensors"), "pt") as handle:
        assert names == set(handle.keys())
