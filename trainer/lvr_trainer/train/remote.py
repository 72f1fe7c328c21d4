"""s3:// run outputs: checkpoints are written to a local staging directory, then uploaded; a resumed
run downloads the latest one first. The `latest` marker is uploaded last, so a reader never sees a
marker pointing at a half-uploaded checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

from lvr_trainer.train.checkpoint import LATEST, step_dir


def is_remote(uri: str) -> bool:
    return uri.startswith("s3://")


def local_output_dir(uri: str) -> Path:
    """Where a run writes locally: the directory itself, or a staging mirror of an s3:// output."""
    if not is_remote(uri):
        return Path(uri)
    root = Path(os.environ.get("LVR_STAGING_DIR", os.path.expanduser("~/.cache/lvr/runs")))
    return root / uri.removeprefix("s3://")


def _store(uri: str, timeout_s: float = 60.0):
    from lvr_trainer.cache.s3 import S3Store

    return S3Store.from_uri(uri, timeout_s=timeout_s, suffix="")


def _key(store, rel: str) -> str:
    return f"{store.prefix}/{rel}" if store.prefix else rel


def push_checkpoint(uri: str, local: Path, step: int) -> int:
    """Upload checkpoint `step` (and metrics.jsonl) under `uri`, then the `latest` marker; returns files sent."""
    store = _store(uri)
    ckpt = step_dir(local, step)
    files = sorted(p for p in ckpt.rglob("*") if p.is_file())
    extras = [local / "metrics.jsonl"] if (local / "metrics.jsonl").is_file() else []
    for path in files + extras:
        rel = path.relative_to(local).as_posix()
        store._call(f"PUT {rel}", store.client.fput_object, store.bucket, _key(store, rel), str(path))
    marker = local / "checkpoints" / LATEST
    store._call("PUT latest", store.client.fput_object, store.bucket, _key(store, f"checkpoints/{LATEST}"), str(marker))
    return len(files) + len(extras) + 1


def pull_latest(uri: str, local: Path) -> str | None:
    """Download the checkpoint the remote `latest` marker names into `local`; its name, or None."""
    store = _store(uri)
    data = store._call("GET latest", lambda: _read(store, _key(store, f"checkpoints/{LATEST}")))
    if data is None:
        return None
    name = data.decode().strip()
    _store(f"{uri.rstrip('/')}/checkpoints/{name}").download_prefix(local / "checkpoints" / name)
    (local / "checkpoints" / LATEST).write_text(name)
    return name


def _read(store, key: str) -> bytes:
    resp = store.client.get_object(store.bucket, key)
    try:
        return resp.read()
    finally:
        resp.close()
        resp.release_conn()

