"""The `EmbeddingStore` seam: bytes by key, in a local directory or an S3/MinIO bucket.

Code above the seam (`EmbeddingCache`) never knows which store it got. Stores move bytes only; the
payload format and its checksum live in `payload.py`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class EmbeddingStore(Protocol):
    uri: str

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when the key is absent."""

    def put(self, key: str, data: bytes) -> None:
        """Store atomically: readers see the old object, no object, or all of `data`."""

    def delete(self, key: str) -> None:
        """Remove the key if present."""


def open_store(uri: str, timeout_s: float = 10.0, max_bytes: int | None = None) -> EmbeddingStore:
    """`s3://bucket/prefix` -> S3Store (credentials from env or a mounted secret); else a LocalStore."""
    if uri.startswith("s3://"):
        from lvr_trainer.storage.s3 import S3Store

        return S3Store.from_uri(uri, timeout_s=timeout_s)
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"cache uri {uri!r}: use a local directory or s3://bucket/prefix")
    from lvr_trainer.cache.local import LocalStore

    return LocalStore(uri.removeprefix("file://"), max_bytes=max_bytes)
