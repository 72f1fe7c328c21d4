"""The stored form of one video's embeddings: safetensors bytes with a checksum verified on read."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

import torch

FORMAT = "lvr-video-embeddings/1"


class CorruptEntry(ValueError):
    """Bytes that are not a valid, intact entry for the expected key."""


@dataclass(frozen=True)
class CachedVideo:
    """embeds: (N, hidden); video_grid_thw: (1, 3) int64; meta: small JSON-able extras."""

    embeds: torch.Tensor
    video_grid_thw: torch.Tensor
    meta: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return int(self.embeds.shape[0])


def _header(blob: bytes) -> tuple[dict, int]:
    """(header JSON, offset of the data section) of a safetensors blob."""
    if len(blob) < 8:
        raise CorruptEntry(f"{len(blob)} bytes is too short for a safetensors file")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise CorruptEntry(f"header length {n} exceeds the object size {len(blob)}")
    try:
        return json.loads(blob[8:8 + n]), 8 + n
    except ValueError as err:
        raise CorruptEntry(f"header is not JSON ({err})") from None


def _checksum(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def pack(key: str, video: CachedVideo) -> bytes:
    """safetensors bytes of `video`; metadata holds the key, format and sha256 of the tensor data."""
    from safetensors.torch import save

    tensors = {"embeds": video.embeds.detach().cpu().contiguous(),
               "video_grid_thw": video.video_grid_thw.detach().cpu().to(torch.int64).contiguous()}
    body = save(tensors, metadata={"format": FORMAT, "key": key})
    _, start = _header(body)
    meta = {"format": FORMAT, "key": key, "sha256": _checksum(body[start:]), "meta": json.dumps(video.meta)}
    return save(tensors, metadata=meta)


def unpack(key: str, blob: bytes) -> CachedVideo:
    """Parse and verify `blob` for `key`; raises CorruptEntry on any mismatch or damage."""
    from safetensors.torch import load

    header, start = _header(blob)
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        raise CorruptEntry(f"format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("key") != key:
        raise CorruptEntry(f"entry holds key {meta.get('key')!r}, not {key!r}")
    if meta.get("sha256") != _checksum(blob[start:]):
        raise CorruptEntry("checksum mismatch: the tensor data is damaged")
    try:
        tensors = load(blob)
        return CachedVideo(tensors["embeds"], tensors["video_grid_thw"], json.loads(meta.get("meta") or "{}"))
    except Exception as err:  # safetensors raises SafetensorError, KeyError, ...
        raise CorruptEntry(f"cannot load tensors ({err})") from None
