"""`LocalStore`: a directory of safetensors files, written atomically, optionally size-bounded (LRU)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lvr_trainer.storage.naming import object_name


class LocalStore:
    """Entries at `root/ab/<key>.safetensors`. Reads refresh the mtime, which is the LRU clock.

    Writes go to a temporary file in the same directory and are renamed into place (`os.replace`),
    so two processes writing one key both succeed and a reader never sees a partial file.
    """

    def __init__(self, root: str | Path, max_bytes: int | None = None):
        self.root = Path(root).expanduser()
        self.max_bytes = max_bytes
        self.uri = str(self.root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / object_name(key)

    def get(self, key: str) -> bytes | None:
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            os.utime(path)
        except FileNotFoundError:  # evicted by another process in between; the bytes are still good
            pass
        return data

    def put(self, key: str, data: bytes) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if self.max_bytes is not None:
            self.evict(keep=path)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def entries(self) -> list[tuple[float, int, Path]]:
        """(mtime, size, path) of every entry, oldest first."""
        out = []
        for path in self.root.glob("*/*.safetensors"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            out.append((st.st_mtime, st.st_size, path))
        return sorted(out)

    def total_bytes(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def evict(self, keep: Path | None = None) -> int:
        """Delete least recently used entries until the store fits `max_bytes`; returns how many."""
        if self.max_bytes is None:
            return 0
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        removed = 0
        for _, size, path in entries:
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
        return removed
