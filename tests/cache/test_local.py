from __future__ import annotations

import multiprocessing as mp
import os
import time

from lvr_trainer.cache.embedding_cache import EmbeddingCache
from lvr_trainer.cache.local import LocalStore
from lvr_trainer.cache.payload import pack, unpack
from lvr_trainer.cache.store import EmbeddingStore, open_store

from .conftest import KEY, make_entry


def test_put_get_delete(tmp_path):
    store = LocalStore(tmp_path)
    assert isinstance(store, EmbeddingStore)
    assert store.get(KEY) is None
    store.put(KEY, b"abc")
    assert store.get(KEY) == b"abc"
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".tmp-")]
    store.delete(KEY)
    assert store.get(KEY) is None
    assert isinstance(open_store(str(tmp_path / "x")), LocalStore)


def _key(i: int) -> str:
    return f"{i:02x}" + "0" * 62


def test_lru_eviction_keeps_recently_read(tmp_path):
    store = LocalStore(tmp_path, max_bytes=350)
    for i in range(3):
        store.put(_key(i), bytes(100))
        os.utime(store.path(_key(i)), (1000 + i, 1000 + i))  # deterministic ages: 0 oldest
    store.get(_key(0))  # touch: 0 is now the most recent
    store.put(_key(3), bytes(100))  # 400 > 350: evict the least recently used, which is 1
    assert store.get(_key(1)) is None
    assert all(store.get(_key(i)) is not None for i in (0, 2, 3))
    assert store.total_bytes() <= 350


def _writer(root: str, seed: int, rounds: int) -> None:
    store = LocalStore(root)
    blob = pack(KEY, make_entry(n=4096, seed=0))  # same key, same content from both processes
    for _ in range(rounds):
        store.put(KEY, blob)


def test_two_processes_writing_one_key_never_expose_a_partial_entry(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), s, 30)) for s in range(2)]
    for p in procs:
        p.start()
    store, reads = LocalStore(tmp_path), 0
    deadline = time.monotonic() + 60
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        blob = store.get(KEY)
        if blob is not None:
            unpack(KEY, blob)  # raises CorruptEntry on a torn read
            reads += 1
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert unpack(KEY, store.get(KEY)).num_tokens == 4096
    assert not [p for p in tmp_path.rglob(".tmp-*")]


def test_corrupt_local_entry_is_recomputed_and_counted(tmp_path):
    store = LocalStore(tmp_path)
    cache = EmbeddingCache(store)
    entry = make_entry()
    cache.save(KEY, entry)
    path = store.path(KEY)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    got, hit = cache.get_or_encode(KEY, lambda: entry)
    assert not hit and cache.stats.corrupt == 1 and cache.stats.vision_passes == 1
    got, hit = cache.get_or_encode(KEY, lambda: entry)
    assert hit and cache.stats.hits == 1 and cache.stats.vision_passes == 1
    m = cache.metrics()
    assert m["cache/hit_rate"] == 0.5 and m["cache/bytes_written"] > 0 and m["cache/bytes_read"] > 0
