"""The build journal of an s3:// dataset kept next to the output (`<out>/.build/journal.jsonl`), so that a
retried preparation pod, whose disk is new, repeats no finished call.

Before the build the remote journal is downloaded (when it holds more than the local one); while it runs, a
background thread uploads the local journal whenever new calls were recorded (one upload in flight, the
next as soon as it ends); the last upload runs when the build ends, failed or not. A pod killed outright loses
only the calls recorded since the last upload began (an upload of a journal of N calls takes about a PUT
of N x 2 KB). An unreachable store makes the mirror log and keep the local journal: the build goes on.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from lvr_trainer.storage.errors import StoreError

log = logging.getLogger("lvr.data.build")
JOURNAL_OBJECT = ".build/journal.jsonl"


class JournalMirror:
    """`restore()` before the journal opens; `changed()` after each recorded call; `close()` at the end."""

    def __init__(self, out_uri: str, local: Path, timeout_s: float = 10.0):
        from lvr_trainer.storage.s3 import S3Store

        self.store = S3Store.from_uri(out_uri, timeout_s=timeout_s)
        self.name = f"{self.store.prefix}/{JOURNAL_OBJECT}" if self.store.prefix else JOURNAL_OBJECT
        self.uri = f"{out_uri.rstrip('/')}/{JOURNAL_OBJECT}"
        self.local = local
        self.uploads = 0
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def restore(self) -> bool:
        """Download the remote journal when it is larger than the local one (a new pod's disk has none)."""
        size = self.store.object_size(self.name)
        if size is None or (self.local.is_file() and self.local.stat().st_size >= size):
            return False
        self.local.parent.mkdir(parents=True, exist_ok=True)
        partial = self.local.with_suffix(".download")
        self.store.download_object(self.name, partial)
        partial.replace(self.local)
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="journal-mirror", daemon=True)
        self._thread.start()

    def changed(self) -> None:
        self._dirty.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._dirty.wait(timeout=0.5):
                self._dirty.clear()
                self._upload()

    def _upload(self) -> None:
        try:
            self.store.upload_file(self.name, self.local, content_type="application/x-ndjson")
            self.uploads += 1
        except StoreError as err:
            log.warning("build journal not mirrored to %s: %s (the local journal keeps the calls)", self.uri, err)

    def close(self) -> None:
        """Stop the thread, then upload once more: what the store holds is the whole journal."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.local.is_file():
            self._upload()
