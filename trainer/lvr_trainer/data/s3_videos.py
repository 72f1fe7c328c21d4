"""s3:// videos as local files: downloaded once into a local cache directory, then decoded like any file.

`local_video(path_or_uri)` is the one call the readers of `VideoQARecord.video` make (validation, the
embedder, the loops' feature source): a local path comes back unchanged; an s3:// URI comes back as
`<cache dir>/<bucket>/<hash of the URI>-<file name>`, downloaded when that file is absent or its size
differs from the object's. The download goes to a temporary name in the same directory and is
renamed into place, so a reader (another rank, another pod on the node) sees no file or the whole file.
`data.location` fetches s3:// dataset JSONLs with the same `fetch`.

The cache directory is `$LVR_VIDEO_CACHE_DIR`, else `~/.cache/lvr/videos`. Endpoint and credentials
are the embedding cache's (`lvr_trainer.storage.s3.s3_settings`: `LVR_S3_ENDPOINT`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, or files in `LVR_S3_SECRET_DIR`), with the same hard per-request timeouts.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from lvr_trainer.data.video import VideoError

CACHE_DIR_ENV = "LVR_VIDEO_CACHE_DIR"
DEFAULT_CACHE_DIR = "~/.cache/lvr/videos"

# uri -> (local path, object size) verified in this process: later calls skip the HEAD request.
_verified: dict[str, tuple[str, int]] = {}


class VideoUnavailable(VideoError):
    """An s3:// video that cannot be fetched for a reason outside the dataset: no endpoint configured,
    the endpoint unreachable, access denied. Not a bad row: the command should stop and say so."""


def is_remote(path_or_uri: str) -> bool:
    return path_or_uri.startswith("s3://")


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR).expanduser()


def remote_unsupported_reason(env: Mapping[str, str] | None = None) -> str | None:
    """Why s3:// videos cannot be fetched here (no endpoint configured), or None when they can."""
    from lvr_trainer.storage.s3 import s3_settings

    if "LVR_S3_ENDPOINT" in s3_settings(env):
        return None
    return ("no S3 endpoint configured: set LVR_S3_ENDPOINT (and AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) "
            "or point LVR_S3_SECRET_DIR at a mounted secret with those keys")


def local_name(uri: str) -> str:
    """`<bucket>/<first 16 hex of sha256(uri)>-<file name>`: one file per URI, readable by people."""
    from lvr_trainer.storage.s3 import parse_s3_uri

    bucket, key = parse_s3_uri(uri)
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return f"{bucket}/{digest}-{PurePosixPath(key).name}"


def fetch(uri: str, dest_dir: str | Path | None = None, timeout_s: float = 10.0,
          env: Mapping[str, str] | None = None, refresh: bool = False,
          missing_hint: str = "check the record's `video`") -> tuple[str, bool]:
    """(local path, whether it was downloaded now) for the s3:// object `uri` (a video, or a dataset
    JSONL: `data.location`). `refresh` downloads even when a local copy of the object's size exists.
    Raises VideoError: kind "missing" for an absent object or bucket (ending with `missing_hint`),
    VideoUnavailable when S3 cannot be used."""
    from lvr_trainer.storage.s3 import S3Store, parse_s3_uri
    from lvr_trainer.storage.errors import StoreError, StoreUnavailable

    try:
        bucket, key = parse_s3_uri(uri)
    except ValueError as err:
        raise VideoError(uri, "missing", str(err)) from None
    if not key:
        raise VideoError(uri, "missing", "the URI names a bucket, not an object (expected s3://bucket/key)")
    reason = remote_unsupported_reason(env)
    if reason:
        raise VideoUnavailable(uri, "unavailable", reason)
    target = Path(dest_dir).expanduser() if dest_dir is not None else cache_dir(env)
    target = target / local_name(uri)
    store = S3Store.from_uri(f"s3://{bucket}", timeout_s=timeout_s, env=env)
    try:
        size = store.object_size(key)
        if size is None:
            raise VideoError(uri, "missing", f"no such object in bucket '{bucket}'; {missing_hint}")
        if refresh or not (target.is_file() and target.stat().st_size == size):
            _download(store, key, target, size, uri)
            fetched = True
        else:
            fetched = False
    except StoreUnavailable:
        raise VideoUnavailable(uri, "unavailable", (
            f"S3 endpoint {store.endpoint_url} did not answer (timeout {timeout_s:g}s per request); "
            "check LVR_S3_ENDPOINT and the network")) from None
    except StoreError as err:
        if "NoSuchBucket" in str(err):
            raise VideoError(uri, "missing", f"bucket '{bucket}' does not exist; {missing_hint}") from None
        raise VideoUnavailable(uri, "unavailable", f"cannot download: {err}") from None
    _verified[uri] = (str(target), size)
    return str(target), fetched


def _download(store, key: str, target: Path, size: int, uri: str) -> None:
    """GET into a unique temporary name beside `target`, check the size, rename into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part")
    try:
        if not store.download_object(key, tmp):
            raise VideoError(uri, "missing", "the object disappeared during the download")
        got = tmp.stat().st_size
        if got != size:
            raise VideoError(uri, "truncated", f"downloaded {got} of {size} bytes; retry the command")
        os.replace(tmp, target)
    finally:
        for leftover in target.parent.glob(f"{tmp.name}*"):  # ours and the client's own partial file
            leftover.unlink(missing_ok=True)


def local_video(path_or_uri: str, timeout_s: float = 10.0) -> str:
    """A local file for a record's video: local paths unchanged, s3:// URIs fetched into the cache.

    A URI already fetched and verified by this process is not asked about again while its local copy
    keeps the object's size. Raises VideoError (see `fetch`).
    """
    if not is_remote(path_or_uri):
        return path_or_uri
    known = _verified.get(path_or_uri)
    if known and os.path.isfile(known[0]) and os.path.getsize(known[0]) == known[1]:
        return known[0]
    return fetch(path_or_uri, timeout_s=timeout_s)[0]


@contextmanager
def named_as(path_or_uri: str, local: str) -> Iterator[None]:
    """Inside, a VideoError about the local copy `local` is re-raised naming `path_or_uri`, the location
    the dataset row gave."""
    try:
        yield
    except VideoError as err:
        if local == path_or_uri or err.path != local:
            raise
        raise VideoError(path_or_uri, err.kind, f"{err.detail} (local copy {local})") from None
