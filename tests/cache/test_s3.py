"""S3Store and the cache's failure policy against a real S3 server (moto_server), not a mock."""

from __future__ import annotations

import io
import socket
import threading
import time
import uuid

import pytest
from minio import Minio

from lvr_trainer.cache.embedding_cache import EmbeddingCache
from lvr_trainer.storage.s3 import S3Store, s3_settings
from lvr_trainer.cache.store import EmbeddingStore, open_store
from lvr_trainer.storage.errors import StoreError, StoreUnavailable

from .conftest import KEY, make_entry


@pytest.fixture()
def store(s3_server):
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    return S3Store.from_uri(f"s3://{s3_server.bucket}/{prefix}", timeout_s=5, env=s3_server.env())


def test_put_get_delete(store):
    assert isinstance(store, EmbeddingStore)
    assert store.get(KEY) is None
    store.put(KEY, b"payload")
    assert store.get(KEY) == b"payload"
    store.delete(KEY)
    assert store.get(KEY) is None


def test_cache_hit_through_s3(store):
    cache = EmbeddingCache(store)
    entry = make_entry()
    _, hit = cache.get_or_encode(KEY, lambda: entry)
    got, hit2 = cache.get_or_encode(KEY, lambda: pytest.fail("must not encode on a hit"))
    assert (hit, hit2) == (False, True)
    assert got.embeds.equal(entry.embeds)
    assert cache.stats.vision_passes == 1 and cache.stats.bytes_read == cache.stats.bytes_written > 0


def test_corrupt_object_is_recomputed_and_counted(store, s3_server):
    cache = EmbeddingCache(store)
    cache.save(KEY, make_entry())
    client = Minio(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, secure=False)
    import io
    client.put_object(s3_server.bucket, store.object(KEY), io.BytesIO(b"\x00" * 64), 64)
    _, hit = cache.get_or_encode(KEY, make_entry)
    assert not hit and cache.stats.corrupt == 1 and cache.stats.vision_passes == 1
    _, hit = cache.get_or_encode(KEY, lambda: pytest.fail("recomputed entry should have been stored"))
    assert hit


def test_credentials_from_a_mounted_secret(tmp_path, s3_server):
    for name, value in s3_server.env().items():
        (tmp_path / name).write_text(value + "\n")
    settings = s3_settings({"LVR_S3_SECRET_DIR": str(tmp_path)})
    assert settings["LVR_S3_ENDPOINT"] == s3_server.url
    store = S3Store.from_uri(f"s3://{s3_server.bucket}/secret", env={"LVR_S3_SECRET_DIR": str(tmp_path)})
    store.put(KEY, b"x")
    assert store.get(KEY) == b"x"


def test_missing_endpoint_and_missing_bucket_are_clear_errors(s3_server, monkeypatch):
    with pytest.raises(StoreError, match="LVR_S3_ENDPOINT"):
        S3Store.from_uri("s3://b/p", env={})
    bad = S3Store.from_uri("s3://no-such-bucket/p", timeout_s=5, env=s3_server.env())
    with pytest.raises(StoreError, match="NoSuchBucket.*create the bucket"):
        bad.get(KEY)
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    assert isinstance(open_store(f"s3://{s3_server.bucket}/x"), S3Store)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def blackhole():
    """A TCP server that accepts connections and never answers (a hung S3)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    conns, stop = [], threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join()
    for c in conns:
        c.close()
    srv.close()


@pytest.mark.parametrize("kind", ["refused", "hung"])
def test_unreachable_store_recomputes_or_fails_fast(kind, blackhole):
    url = f"http://127.0.0.1:{_closed_port()}" if kind == "refused" else blackhole
    env = {"LVR_S3_ENDPOINT": url, "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    store = S3Store.from_uri("s3://bucket/p", timeout_s=0.5, env=env)

    cache = EmbeddingCache(store, on_unreachable="recompute")
    start = time.monotonic()
    _, hit = cache.get_or_encode(KEY, make_entry)
    _, hit2 = cache.get_or_encode(KEY, make_entry)  # store marked down: no second wait
    assert time.monotonic() - start < 5
    assert (hit, hit2) == (False, False) and cache.stats.vision_passes == 2 and cache.stats.unreachable == 1

    strict = EmbeddingCache(store, on_unreachable="fail")
    start = time.monotonic()
    with pytest.raises(StoreUnavailable, match="unreachable.*on_unreachable=recompute"):
        strict.get_or_encode(KEY, make_entry)
    assert time.monotonic() - start < 5


def test_mirror_downloads_an_object_rewritten_with_the_same_size(store, tmp_path):
    """A rerun writes its checkpoint under the same URI with the same sizes: the local mirror must not serve
    the old bytes (found by `make demo` evaluating a previous run's model from ~/.cache/lvr/models)."""
    name = f"{store.prefix}/model/model.safetensors"
    store.client.put_object(store.bucket, name, io.BytesIO(b"A" * 64), 64)
    dest = tmp_path / "mirror"
    assert store.download_prefix(dest) == 1 and (dest / "model/model.safetensors").read_bytes() == b"A" * 64
    assert store.download_prefix(dest) == 0                       # unchanged: nothing fetched again
    store.client.put_object(store.bucket, name, io.BytesIO(b"B" * 64), 64)
    assert store.download_prefix(dest) == 1 and (dest / "model/model.safetensors").read_bytes() == b"B" * 64
