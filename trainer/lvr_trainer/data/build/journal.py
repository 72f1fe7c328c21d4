"""The resumable record of finished calls: a rerun after a crash or Ctrl-C redoes none of them.

One JSON line per finished call, appended and fsynced as soon as the reply arrives, keyed by the
SHA-256 of the request's canonical bytes (`client.canonical_body`: model, messages with the frames,
sampling settings, response format). The key leaves out the endpoint's URL and the API key: the same
request to the same model on a restarted server (a new pod, a new port) is the same call.

Every later stage builds its requests only from earlier replies, so a rerun rebuilds the same requests
and finds them here. A line cut short by a crash is skipped on load (counted in `torn_lines`); the call
it would have recorded is simply made again.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import asdict
from pathlib import Path

from lvr_trainer.data.build.client import Reply, canonical_body

JOURNAL_VERSION = 1


def request_key(body: dict) -> str:
    """SHA-256 hex of the request's canonical JSON."""
    return hashlib.sha256(canonical_body(body)).hexdigest()


class CallJournal:
    """`get(key)` a finished call's Reply; `put(key, stage, reply, seconds)` records one durably."""

    def __init__(self, path: str | Path, on_record=None):
        self.path = Path(path)
        self.on_record = on_record          # called after each call is recorded (the S3 mirror's cue)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._replies: dict[str, Reply] = {}
        self.torn_lines = 0
        self._load()
        self._fh = open(self.path, "a", encoding="utf-8")

    def _load(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    self._replies[entry["key"]] = Reply(**entry["reply"])
                except (ValueError, KeyError, TypeError):
                    self.torn_lines += 1
        with open(self.path, "rb+") as fh:  # a torn last line: start the next record on a fresh line
            if fh.seek(0, os.SEEK_END) and (fh.seek(-1, os.SEEK_END), fh.read(1))[1] != b"\n":
                fh.write(b"\n")

    def __len__(self) -> int:
        return len(self._replies)

    def get(self, key: str) -> Reply | None:
        with self._lock:
            return self._replies.get(key)

    def put(self, key: str, stage: str, reply: Reply, seconds: float) -> None:
        line = json.dumps({"v": JOURNAL_VERSION, "key": key, "stage": stage, "seconds": round(seconds, 3),
                           "reply": asdict(reply)}, ensure_ascii=False)
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._replies[key] = reply
        if self.on_record is not None:
            self.on_record()

    def close(self) -> None:
        with self._lock:
            self._fh.close()
