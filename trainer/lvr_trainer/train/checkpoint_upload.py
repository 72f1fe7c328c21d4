"""s3:// run outputs: checkpoints are written to a local staging directory, then uploaded; a resumed
run downloads the latest one first. The `latest` marker is uploaded last, so a reader never sees a
marker pointing at a half-uploaded checkpoint.

The upload runs in a background thread of rank 0 (`CheckpointUploader`) while training continues: each
object is retried with exponential backoff and jitter, each retry logged and counted, and a checkpoint
that still cannot be uploaded is a `CheckpointUploadError` at the next save or at the end of the run.

A sharded (FSDP) checkpoint of a job on several nodes lies in pieces in each node's staging directory: the
first rank of every other node uploads its node's shards, then an object `.uploaded-node-K` in the
checkpoint; rank 0 uploads the rest and puts `latest` only once every node has said it is done.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lvr_trainer.storage.errors import StoreError
from lvr_trainer.config import ConfigError
from lvr_trainer.layout import CHECKPOINTS, SHARDED_STATE, checked_step_name, step_name
from lvr_trainer.train.checkpoint import LATEST, stale_checkpoints, step_dir

# Retry policy of checkpoint uploads: attempts per object, first delay (doubling, +-50% jitter), cap.
UPLOAD_ATTEMPTS = 5
UPLOAD_BACKOFF_S = 2.0
UPLOAD_BACKOFF_CAP_S = 60.0
# How long node 0 waits for the other nodes' shards of a sharded checkpoint before giving the upload up.
NODE_WAIT_S = 1800.0
NODE_POLL_S = 2.0


@dataclass(frozen=True)
class NodeShare:
    """Which node of how many uploads: node 0 uploads the checkpoint and its marker, the others their shards."""

    rank: int = 0
    count: int = 1


def node_done_name(node: int) -> str:
    return f".uploaded-node-{node}"


class CheckpointUploadError(RuntimeError):
    """A checkpoint that could not be uploaded to the s3:// output after every retry."""


def is_remote(uri: str) -> bool:
    return uri.startswith("s3://")


def local_output_dir(uri: str) -> Path:
    """Where a run writes locally: the directory itself, or a staging mirror of an s3:// output."""
    if not is_remote(uri):
        return Path(uri)
    root = Path(os.environ.get("LVR_STAGING_DIR", os.path.expanduser("~/.cache/lvr/runs")))
    return root / uri.removeprefix("s3://")


def _store(uri: str, timeout_s: float = 60.0):
    from lvr_trainer.storage.s3 import S3Store

    return S3Store.from_uri(uri, timeout_s=timeout_s, suffix="")


def _key(store, rel: str) -> str:
    return f"{store.prefix}/{rel}" if store.prefix else rel


def _put_once(uri: str, rel: str, path: Path) -> None:
    store = _store(uri)     # a fresh client per attempt: no pooled connection outlives an outage
    store.upload_file(_key(store, rel), path)


def push_checkpoint(uri: str, local: Path, step: int,
                    put: Callable[[str, str, Path], None] = _put_once, node: NodeShare = NodeShare(),
                    landed: Callable[[str, str], bool] | None = None, sleep: Callable[[float], None] = time.sleep,
                    wait_s: float = NODE_WAIT_S) -> int:
    """Upload checkpoint `step` (and metrics.jsonl) under `uri`, then the `latest` marker; returns files
    sent. `put(uri, relative key, local file)` sends one object (the uploader's retrying one). A node other
    than 0 sends only its node's shards and its done object; node 0 waits (`landed(uri, key)` polled) for
    every other node's done object before the marker."""
    ckpt = step_dir(local, step)
    files = sorted(p for p in ckpt.rglob("*") if p.is_file() and not p.name.startswith(".uploaded-node-"))
    if node.rank > 0:
        shards = [p for p in files if p.parent.name == SHARDED_STATE and p.suffix == ".distcp"]
        for path in shards:
            put(uri, path.relative_to(local).as_posix(), path)
        done = ckpt / node_done_name(node.rank)
        done.write_text(str(len(shards)))
        put(uri, done.relative_to(local).as_posix(), done)
        return len(shards) + 1
    extras = [local / "metrics.jsonl"] if (local / "metrics.jsonl").is_file() else []
    for path in files + extras:
        put(uri, path.relative_to(local).as_posix(), path)
    landed = landed or _landed
    sharded = (ckpt / SHARDED_STATE).is_dir()       # a whole-model checkpoint is all on node 0
    for other in range(1, node.count if sharded else 1):
        key = f"{ckpt.relative_to(local).as_posix()}/{node_done_name(other)}"
        waited = 0.0
        while not landed(uri, key):
            if waited >= wait_s:
                raise StoreError(f"node {other} did not upload its shards of {step_name(step)} within {wait_s:g} s "
                                 "(its trainer's log says why)")
            sleep(NODE_POLL_S)
            waited += NODE_POLL_S
    put(uri, f"{CHECKPOINTS}/{LATEST}", local / CHECKPOINTS / LATEST)
    return len(files) + len(extras) + 1


def _landed(uri: str, rel: str) -> bool:
    store = _store(uri)
    return store.object_size(_key(store, rel)) is not None


def prune_remote(uri: str, keep_last: int | None) -> list[str]:
    """Delete the checkpoints under `uri` beyond the newest `keep_last` (never the one the remote
    `latest` names); their names."""
    if keep_last is None:
        return []
    store = _store(f"{uri.rstrip('/')}/{CHECKPOINTS}")
    objects = [name for name, _ in store.list_objects()]
    rel = [name[len(store.prefix):].lstrip("/") for name in objects]
    latest = store._call("GET latest", lambda: _read(store, _key(store, LATEST)))
    stale = stale_checkpoints([r.split("/", 1)[0] for r in rel if "/" in r],
                              latest.decode().strip() if latest else None, keep_last)
    for name, r in zip(objects, rel):
        if r.split("/", 1)[0] in stale:
            store._call(f"DELETE {name}", store.client.remove_object, store.bucket, name)
    return stale


def pull_latest(uri: str, local: Path) -> str | None:
    """Download the checkpoint the remote `latest` marker names into `local`; its name, or None."""
    store = _store(uri)
    data = store._call("GET latest", lambda: _read(store, _key(store, f"{CHECKPOINTS}/{LATEST}")))
    if data is None:
        return None
    try:
        name = checked_step_name(data.decode(errors="replace"), f"{uri.rstrip('/')}/{CHECKPOINTS}/{LATEST}")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    _store(f"{uri.rstrip('/')}/{CHECKPOINTS}/{name}").download_prefix(local / CHECKPOINTS / name)
    (local / CHECKPOINTS / LATEST).write_text(name)
    return name


def _read(store, key: str) -> bytes:
    resp = store.client.get_object(store.bucket, key)
    try:
        return resp.read()
    finally:
        resp.close()
        resp.release_conn()


@dataclass
class UploadStats:
    """Counters since the run started (rank 0), reported as `checkpoint/*` metrics."""

    uploads: int = 0          # checkpoints fully uploaded
    retries: int = 0          # object uploads that failed and were tried again
    failures: int = 0         # checkpoints given up on (the run stops at the next save)
    prune_failures: int = 0   # remote prunes that failed (logged; the next save prunes again)
    last_seconds: float = 0.0

    def metrics(self) -> dict[str, float]:
        return {"checkpoint/uploads": float(self.uploads), "checkpoint/upload_retries": float(self.retries),
                "checkpoint/upload_failures": float(self.failures),
                "checkpoint/prune_failures": float(self.prune_failures),
                "checkpoint/upload_s": self.last_seconds}


class CheckpointUploader:
    """Uploads one checkpoint at a time to an s3:// output in a background thread, then prunes the
    remote checkpoints beyond `keep_last`. `start(step)` first waits for the previous upload; `wait()`
    joins and raises CheckpointUploadError if the upload was given up on. The thread is not a daemon, so
    an interpreter that exits (a crash elsewhere) finishes the upload first."""

    def __init__(self, uri: str, local: Path, keep_last: int | None, attempts: int | None = None,
                 backoff_s: float | None = None, sleep: Callable[[float], None] = time.sleep,
                 node: NodeShare = NodeShare()):
        self.uri, self.local, self.keep_last, self.node = uri, local, keep_last, node
        self.attempts = UPLOAD_ATTEMPTS if attempts is None else attempts
        self.backoff_s = UPLOAD_BACKOFF_S if backoff_s is None else backoff_s
        self.sleep = sleep
        self.stats = UploadStats()
        self.error: CheckpointUploadError | None = None
        self._thread: threading.Thread | None = None

    def start(self, step: int) -> None:
        self.wait()
        self._thread = threading.Thread(target=self._upload, args=(step,), name=f"lvr-upload-{step}")
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.error is not None:
            raise self.error

    def _upload(self, step: int) -> None:
        t0 = time.perf_counter()
        try:
            files = push_checkpoint(self.uri, self.local, step, self._put, node=self.node)
        except (StoreError, OSError) as err:
            self.stats.failures += 1
            self.error = CheckpointUploadError(
                f"checkpoint {step_name(step)} could not be uploaded to {self.uri} after {self.attempts} attempts "
                f"per object: {err}. It is complete locally in {step_dir(self.local, step)}. The run stops here so "
                "that no more training depends on an unsaved checkpoint: check the S3 endpoint and credentials "
                "(LVR_S3_ENDPOINT, AWS_ACCESS_KEY_ID, the bucket), then restart with --resume (from the last "
                "checkpoint the remote `latest` names).")
            print(f"checkpoint upload: {self.error}", file=sys.stderr)
            return
        self.stats.uploads += 1
        self.stats.last_seconds = time.perf_counter() - t0
        print(f"checkpoint {step_name(step)}: {files} files uploaded to {self.uri} in {self.stats.last_seconds:.1f}s",
              file=sys.stderr)
        if self.node.rank == 0:
            self._prune()

    def _put(self, uri: str, rel: str, path: Path) -> None:
        """One object, tried `attempts` times with exponential backoff and jitter between tries."""
        for attempt in range(1, self.attempts + 1):
            try:
                return _put_once(uri, rel, path)
            except (StoreError, OSError) as err:
                if attempt == self.attempts:
                    raise
                delay = min(UPLOAD_BACKOFF_CAP_S, self.backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
                self.stats.retries += 1
                print(f"checkpoint upload: PUT {rel} failed ({err}); try {attempt + 1} of {self.attempts} in "
                      f"{delay:.1f}s", file=sys.stderr)
                self.sleep(delay)

    def _prune(self) -> None:
        try:
            stale = prune_remote(self.uri, self.keep_last)
        except (StoreError, OSError) as err:
            self.stats.prune_failures += 1
            print(f"checkpoint prune: deleting old checkpoints under {self.uri} failed ({err}); the next save "
                  "tries again", file=sys.stderr)
            return
        if stale:
            print(f"checkpoint prune: deleted {', '.join(stale)} under {self.uri} (train.keep_last="
                  f"{self.keep_last})", file=sys.stderr)
