"""`S3Store`: entries in an S3/MinIO bucket through the `minio` client, with hard timeouts.

Endpoint and credentials come from the environment (`LVR_S3_ENDPOINT`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, optional `AWS_REGION`) or, for variables not set there, from files of the
same names in the directory `LVR_S3_SECRET_DIR` (a mounted Kubernetes Secret). Every request has a
connect and read timeout and at most `retries` retries: an unreachable server is a StoreUnavailable
within about (retries + 1) x timeout_s, never a hang.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

from lvr_trainer.storage.errors import StoreError, StoreUnavailable
from lvr_trainer.storage.naming import object_name

ENV_KEYS = ("LVR_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")


def s3_settings(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The S3 variables from `env` (default os.environ), filled in from `LVR_S3_SECRET_DIR` files."""
    env = dict(os.environ if env is None else env)
    secret_dir = env.get("LVR_S3_SECRET_DIR")
    out = {}
    for name in ENV_KEYS:
        value = env.get(name)
        if not value and secret_dir and (Path(secret_dir) / name).is_file():
            value = (Path(secret_dir) / name).read_text().strip()
        if value:
            out[name] = value
    return out


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix")."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3:// URI: {uri!r} (expected s3://bucket/prefix)")
    return parsed.netloc, parsed.path.strip("/")


class S3Store:
    def __init__(self, endpoint_url: str, bucket: str, prefix: str = "", access_key: str | None = None,
                 secret_key: str | None = None, region: str = "us-east-1", timeout_s: float = 10.0,
                 retries: int = 1, suffix: str = ".safetensors"):
        import urllib3
        from minio import Minio

        url = urlparse(endpoint_url if "://" in endpoint_url else f"http://{endpoint_url}")
        self.endpoint_url, self.bucket, self.prefix, self.suffix = url.geturl(), bucket, prefix.strip("/"), suffix
        self.timeout_s = timeout_s
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
            retries=urllib3.Retry(total=retries, connect=retries, read=retries, redirect=0, status=0,
                                  backoff_factor=0.1),
            maxsize=8)
        self.client = Minio(url.netloc, access_key=access_key, secret_key=secret_key,
                            secure=url.scheme == "https", region=region, http_client=http)

    @classmethod
    def from_uri(cls, uri: str, timeout_s: float = 10.0, env: Mapping[str, str] | None = None,
                 **kwargs) -> S3Store:
        bucket, prefix = parse_s3_uri(uri)
        s = s3_settings(env)
        if "LVR_S3_ENDPOINT" not in s:
            raise StoreError(f"{uri}: no S3 endpoint; set LVR_S3_ENDPOINT (e.g. http://minio:9000) or mount a "
                             "secret with that key and point LVR_S3_SECRET_DIR at it")
        return cls(s["LVR_S3_ENDPOINT"], bucket, prefix, s.get("AWS_ACCESS_KEY_ID"),
                   s.get("AWS_SECRET_ACCESS_KEY"), s.get("AWS_REGION", "us-east-1"), timeout_s, **kwargs)

    def object(self, key: str) -> str:
        name = object_name(key, self.suffix)
        return f"{self.prefix}/{name}" if self.prefix else name

    def _call(self, what: str, fn, *args, **kwargs):
        """Run one client call, mapping transport failures to StoreUnavailable and S3 errors to StoreError."""
        from minio.error import S3Error
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kwargs)
        except S3Error as err:
            if err.code in ("NoSuchKey", "NoSuchObject"):
                return None
            hint = "; create the bucket or fix cache.uri" if err.code == "NoSuchBucket" else ""
            raise StoreError(f"{self.uri}: {what} failed: {err.code}: {err.message}{hint}") from None
        except (HTTPError, OSError) as err:
            raise StoreUnavailable(
                f"S3 endpoint {self.endpoint_url} unreachable during {what} ({type(err).__name__}: "
                f"{str(err)[:200]}); timeout {self.timeout_s:g}s per request. Check LVR_S3_ENDPOINT and the "
                "network, or set cache.on_unreachable=recompute to train without the cache") from None

    def get(self, key: str) -> bytes | None:
        def fetch():
            resp = self.client.get_object(self.bucket, self.object(key))
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        return self._call(f"GET {self.object(key)}", fetch)

    def put(self, key: str, data: bytes) -> None:
        self._call(f"PUT {self.object(key)}", self.client.put_object, self.bucket, self.object(key),
                   io.BytesIO(data), len(data), content_type="application/octet-stream")

    def delete(self, key: str) -> None:
        self._call(f"DELETE {self.object(key)}", self.client.remove_object, self.bucket, self.object(key))

    def object_size(self, name: str) -> int | None:
        """Size in bytes of the object `name` (a whole object name: no prefix or suffix added), or None."""
        stat = self._call(f"HEAD {name}", self.client.stat_object, self.bucket, name)
        return None if stat is None else int(stat.size)

    def download_object(self, name: str, dest: str | Path) -> bool:
        """GET the object `name` into the file `dest`; False when it is absent."""
        return self._call(f"GET {name}", self.client.fget_object, self.bucket, name, str(dest)) is not None

    def list_objects(self) -> list[tuple[str, int]]:
        """(object name, size) of every object under the prefix, in name order."""
        return [(name, size) for name, size, _ in self.list_object_versions()]

    def list_object_versions(self) -> list[tuple[str, int, str]]:
        """(object name, size, ETag) of every object under the prefix, in name order: the ETag changes
        whenever an object is written again, even with the same size."""
        objects = self._call("LIST", lambda: list(self.client.list_objects(
            self.bucket, prefix=f"{self.prefix}/" if self.prefix else None, recursive=True))) or []
        return sorted((obj.object_name, int(obj.size), str(obj.etag or "").strip('"')) for obj in objects)

    def upload_file(self, name: str, path: str | Path, content_type: str = "application/octet-stream") -> None:
        """PUT the local file `path` as the object `name` (a whole object name: no prefix or suffix added)."""
        self._call(f"PUT {name}", self.client.fput_object, self.bucket, name, str(path),
                   content_type=content_type)

    def download_prefix(self, dest: str | Path) -> int:
        """Mirror every object under the prefix into `dest`; returns downloads. A local file is kept only
        when its size and the ETag recorded when it was downloaded (`dest/.lvr-etags.json`) both match the
        object: a run that rewrote its output under the same URI (a checkpoint of the same architecture
        has the same size) is downloaded again, never served stale."""
        import json

        dest = Path(dest)
        record = dest / ".lvr-etags.json"
        try:
            etags = json.loads(record.read_text()) if record.is_file() else {}
        except ValueError:
            etags = {}
        n = 0
        for name, size, etag in self.list_object_versions():
            rel = name[len(self.prefix):].lstrip("/")
            target = dest / rel
            if target.is_file() and target.stat().st_size == size and etag and etags.get(rel) == etag:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            self._call(f"GET {name}", self.client.fget_object, self.bucket, name, str(target))
            etags[rel] = etag
            n += 1
        if n:
            dest.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps(etags, indent=0, sort_keys=True))
        return n
