"""Content-addressed cache keys (pure functions, plus one memoised file hash).

A key changes exactly when the embeddings would: the video's bytes, the frame indices, the frame size,
the processor settings, the vision weights (a digest) and the dtype they were computed in.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

KEY_VERSION = 1
_CHUNK = 1 << 20
_file_digests: dict[tuple[str, int, int], str] = {}


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digest(path: str) -> str:
    """sha256 of a file's bytes; memoised per (path, size, mtime) so a video is read once per process."""
    st = os.stat(path)
    memo = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if memo not in _file_digests:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
        _file_digests[memo] = h.hexdigest()
    return _file_digests[memo]


def embedding_key(video_digest: str, frame_indices: Sequence[int], frame_size: tuple[int, int],
                  processor_settings: dict, vision_digest: str, dtype: str) -> str:
    """A 64-hex-digit key for one video's embeddings under one encoder and sampling."""
    spec = {
        "v": KEY_VERSION,
        "video": video_digest,
        "frames": [int(i) for i in frame_indices],
        "size": [int(frame_size[0]), int(frame_size[1])],
        "processor": processor_settings,
        "vision": vision_digest,
        "dtype": str(dtype),
    }
    return hash_bytes(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode())
