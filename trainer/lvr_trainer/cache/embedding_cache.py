"""`EmbeddingCache`: get-or-encode in front of any EmbeddingStore, with counters and failure policy.

- hit: the stored entry, checksum verified; a corrupt entry is deleted, counted, and recomputed.
- unreachable store: `on_unreachable="recompute"` encodes anyway (counted; the store is skipped for
  `retry_after_s` so every video does not wait out a timeout), `"fail"` raises StoreUnavailable.
- every vision pass made through the cache is counted (`cache/vision_passes`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from lvr_trainer.cache.payload import CachedVideo, CorruptEntry, pack, unpack
from lvr_trainer.cache.store import EmbeddingStore
from lvr_trainer.storage.errors import StoreUnavailable


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    unreachable: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    vision_passes: int = 0
    encode_seconds: float = 0.0

    @property
    def hit_rate(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


class EmbeddingCache:
    def __init__(self, store: EmbeddingStore | None, on_unreachable: str = "recompute",
                 retry_after_s: float = 30.0):
        if on_unreachable not in ("recompute", "fail"):
            raise ValueError(f"on_unreachable must be 'recompute' or 'fail', got {on_unreachable!r}")
        self.store, self.on_unreachable, self.retry_after_s = store, on_unreachable, retry_after_s
        self.stats = CacheStats()
        self._down_until = 0.0

    @classmethod
    def from_config(cls, cfg) -> EmbeddingCache:
        """From a `CacheConfig`; `enabled: false` gives a cache that always encodes."""
        from lvr_trainer.cache.store import open_store

        store = open_store(cfg.uri, cfg.timeout_s, cfg.max_bytes) if cfg.enabled else None
        return cls(store, cfg.on_unreachable)

    def _unreachable(self, err: StoreUnavailable) -> None:
        self.stats.unreachable += 1
        if self.on_unreachable == "fail":
            raise err
        self._down_until = time.monotonic() + self.retry_after_s

    def _usable(self) -> bool:
        return self.store is not None and time.monotonic() >= self._down_until

    def lookup(self, key: str) -> CachedVideo | None:
        """The entry for `key`, or None (absent, corrupt, store down or disabled). Counts hit or miss."""
        if not self._usable():
            self.stats.misses += 1
            return None
        try:
            blob = self.store.get(key)
        except StoreUnavailable as err:
            self._unreachable(err)
            blob = None
        if blob is None:
            self.stats.misses += 1
            return None
        self.stats.bytes_read += len(blob)
        try:
            entry = unpack(key, blob)
        except CorruptEntry:
            self.stats.corrupt += 1
            self.stats.misses += 1
            self._delete_quietly(key)
            return None
        self.stats.hits += 1
        return entry

    def save(self, key: str, entry: CachedVideo) -> None:
        """Store `entry` (no-op when disabled or down)."""
        if not self._usable():
            return
        blob = pack(key, entry)
        try:
            self.store.put(key, blob)
        except StoreUnavailable as err:
            self._unreachable(err)
            return
        self.stats.bytes_written += len(blob)

    def get_or_encode(self, key: str, encode: Callable[[], CachedVideo]) -> tuple[CachedVideo, bool]:
        """(entry, was_hit): the cached entry, or `encode()`'s result, stored for next time."""
        entry = self.lookup(key)
        if entry is not None:
            return entry, True
        entry = self.encoded(encode)
        self.save(key, entry)
        return entry, False

    def encoded(self, encode: Callable[[], CachedVideo]) -> CachedVideo:
        """Run `encode()` and count it as one vision pass."""
        start = time.perf_counter()
        entry = encode()
        self.stats.vision_passes += 1
        self.stats.encode_seconds += time.perf_counter() - start
        return entry

    def _delete_quietly(self, key: str) -> None:
        try:
            self.store.delete(key)
        except Exception:  # the recompute overwrites it anyway
            pass

    def metrics(self) -> dict[str, float]:
        """Namespaced counters for the metrics accumulator (`cache/hits`, `cache/hit_rate`, ...)."""
        out = {f"cache/{k}": float(v) for k, v in asdict(self.stats).items()}
        out["cache/hit_rate"] = self.stats.hit_rate
        return out
