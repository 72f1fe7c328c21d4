"""Where a content-addressed key lives inside a store (pure)."""

from __future__ import annotations


def object_name(key: str, suffix: str = ".safetensors") -> str:
    """Where a key lives inside a store: `ab/abcdef....safetensors` (256 shards)."""
    if len(key) < 8 or any(c not in "0123456789abcdef" for c in key):
        raise ValueError(f"not a cache key: {key!r}")
    return f"{key[:2]}/{key}{suffix}"
