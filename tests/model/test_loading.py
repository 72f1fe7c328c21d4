from __future__ import annotations

import pytest
import torch

from lvr_trainer.config import ModelConfig
from lvr_trainer.model.loading import load_model, vision_tower, weights_digest
from lvr_trainer.model.presets import PRESETS


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_presets_are_seeded_and_frozen_vision(tiny):
    model, tok = tiny
    again, _ = load_model(ModelConfig(preset="tiny"))
    other, _ = load_model(ModelConfig(preset="tiny", seed=1))
    assert _same_weights(model, again) and not _same_weights(model, other)
    assert model.get_input_embeddings().num_embeddings == len(tok)
    assert model.config.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert not any(p.requires_grad for p in vision_tower(model).parameters())
    assert any(p.requires_grad for p in model.lm_head.parameters())
    assert set(PRESETS) >= {"tiny", "small"}


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ValueError, match="known presets: small, tiny"):
        load_model(ModelConfig(preset="huge"))


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_model(ModelConfig(path=str(tmp_path / "missing")))


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory, tiny):
    model, tok = tiny
    out = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_from_pretrained_directory_roundtrip(saved_tiny, tiny):
    loaded, tok = load_model(ModelConfig(path=str(saved_tiny)))
    assert _same_weights(loaded, tiny[0])
    assert tok("which colour")["input_ids"] == tiny[1]("which colour")["input_ids"]


def test_weights_digest_names_exactly_the_saved_weights(saved_tiny, tiny):
    """The SFT -> RL handoff check: the digest of a saved-then-loaded model equals the original's, and one
    changed value changes it."""
    loaded, _ = load_model(ModelConfig(path=str(saved_tiny)))
    assert weights_digest(loaded) == weights_digest(tiny[0])
    with torch.no_grad():
        next(loaded.parameters()).view(-1)[0] += 1e-3
    assert weights_digest(loaded) != weights_digest(tiny[0])


def test_from_s3_prefix(saved_tiny, tiny, s3_server, monkeypatch, tmp_path):
    from minio import Minio

    client = Minio(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, secure=False)
    for f in saved_tiny.iterdir():
        client.fput_object(s3_server.bucket, f"models/tiny/{f.name}", str(f))
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("HOME", str(tmp_path))  # the mirror goes under ~/.cache/lvr/models
    loaded, _ = load_model(ModelConfig(path=f"s3://{s3_server.bucket}/models/tiny"))
    assert _same_weights(loaded, tiny[0])


def test_files_digest_names_the_weight_files_and_their_bytes(saved_tiny, tmp_path):
    import shutil

    from lvr_trainer.model.loading import files_digest

    copy = tmp_path / "copy"
    shutil.copytree(saved_tiny, copy)
    assert files_digest(copy) == files_digest(saved_tiny)
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert files_digest(copy) != files_digest(saved_tiny)
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        files_digest(tmp_path)
