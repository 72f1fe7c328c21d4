from __future__ import annotations

import pytest
import torch

from lvr_trainer.cache.keys import embedding_key, file_digest

from lvr_trainer.storage.naming import object_name
from lvr_trainer.cache.payload import CorruptEntry, pack, unpack

from .conftest import KEY

BASE = dict(video_digest="v" * 64, frame_indices=[0, 5, 10], frame_size=(112, 112),
            processor_settings={"patch_size": 14, "merge_size": 2}, vision_digest="w" * 64, dtype="torch.float32")


def test_key_is_stable_and_changes_with_every_input():
    key = embedding_key(**BASE)
    assert key == embedding_key(**BASE) and len(key) == 64
    changes = dict(video_digest="x" * 64, frame_indices=[0, 5, 11], frame_size=(112, 140),
                   processor_settings={"patch_size": 16, "merge_size": 2}, vision_digest="y" * 64,
                   dtype="torch.bfloat16")
    for field, value in changes.items():
        assert embedding_key(**{**BASE, field: value}) != key, field


def test_file_digest_reads_content(tmp_path):
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    a.write_bytes(b"same")
    b.write_bytes(b"same")
    assert file_digest(str(a)) == file_digest(str(b))
    b.write_bytes(b"different bytes")
    assert file_digest(str(a)) != file_digest(str(b))


def test_object_name_shards_and_rejects_non_keys():
    assert object_name(KEY) == f"ab/{KEY}.safetensors"
    with pytest.raises(ValueError, match="not a cache key"):
        object_name("../etc/passwd")


def test_payload_roundtrip(entry):
    back = unpack(KEY, pack(KEY, entry))
    assert torch.equal(back.embeds, entry.embeds) and torch.equal(back.video_grid_thw, entry.video_grid_thw)
    assert back.meta == entry.meta


def test_payload_roundtrip_bf16(entry):
    bf = type(entry)(entry.embeds.bfloat16(), entry.video_grid_thw, {})
    assert unpack(KEY, pack(KEY, bf)).embeds.dtype == torch.bfloat16


def test_damage_is_detected(entry):
    blob = bytearray(pack(KEY, entry))
    flipped = bytes(blob[:-5]) + bytes([blob[-5] ^ 0xFF]) + bytes(blob[-4:])
    with pytest.raises(CorruptEntry, match="checksum"):
        unpack(KEY, flipped)
    with pytest.raises(CorruptEntry):
        unpack(KEY, bytes(blob[: len(blob) // 2]))
    with pytest.raises(CorruptEntry):
        unpack(KEY, b"garbage")
    with pytest.raises(CorruptEntry, match="holds key"):
        unpack("cd" + "0" * 62, bytes(blob))
