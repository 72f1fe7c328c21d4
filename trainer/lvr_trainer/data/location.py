"""Where a dataset is: its JSONL (a local file or an s3:// object) and the base its rows' relative
`video` paths resolve against (the JSONL's directory, or a video root the user names).

`open_dataset(location, video_root)` is the one call the dataset readers make (`lvr data validate`,
`lvr encode`, the loops' `load_split`). An s3:// JSONL is downloaded through `data.remote` (same
endpoint, credentials, cache directory and per-request timeouts as s3:// videos) on every call, since
a JSONL can be edited in place without changing its size. The path helpers are pure string functions:
`pathlib.Path` would turn `s3://bucket/key` into `s3:/bucket/key`.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lvr_trainer.data.schema import VideoQARecord

S3 = "s3://"


class DatasetUnavailable(Exception):
    """A dataset JSONL that cannot be fetched: an absent object or bucket, no S3 endpoint configured, an
    unreachable endpoint. The message names the URI and what to do."""


def is_s3(location: str) -> bool:
    return location.startswith(S3)


def join_location(base: str, relative: str) -> str:
    """`relative` under `base`, a local directory or an s3:// prefix; `.` and `..` are folded for s3://
    (`s3://b/data/splits` + `../videos/v.mp4` -> `s3://b/data/videos/v.mp4`)."""
    if not is_s3(base):
        return str(Path(base) / relative)
    joined = posixpath.normpath(f"{base[len(S3):].rstrip('/')}/{relative}")
    return S3 + joined


def parent_location(location: str) -> str:
    """The directory of a file: `s3://b/d/x.jsonl` -> `s3://b/d`, `s3://b/x.jsonl` -> `s3://b`,
    `data/x.jsonl` -> `data`."""
    if not is_s3(location):
        return str(Path(location).parent)
    bucket_and_key = location[len(S3):].rstrip("/")
    head = posixpath.dirname(bucket_and_key)
    return S3 + (head or bucket_and_key)


@dataclass(frozen=True)
class DatasetFile:
    """A dataset as the readers see it. `location`: as given (path or s3:// URI); `local`: a readable
    local file with its rows; `video_base`: where relative `video` paths resolve (directory or s3:// prefix)."""

    location: str
    local: Path
    video_base: str

    def video(self, record: VideoQARecord) -> str:
        """The record's video: an s3:// URI, an absolute path, or a path under `video_base`."""
        return record.video_path(self.video_base)


def open_dataset(location: str | Path, video_root: str | Path | None = None,
                 timeout_s: float = 10.0) -> DatasetFile:
    """The dataset at `location`; s3:// JSONLs are downloaded now. A local path is not checked here (the
    reader reports a missing file in its own words). Raises DatasetUnavailable for s3:// problems."""
    location = str(location)
    local = Path(fetch_jsonl(location, timeout_s)) if is_s3(location) else Path(location)
    base = str(video_root) if video_root else parent_location(location)
    return DatasetFile(location, local, base)


def fetch_jsonl(uri: str, timeout_s: float = 10.0) -> str:
    """A fresh local copy of the s3:// JSONL `uri` (in the video cache directory, `data.remote`)."""
    from lvr_trainer.data.s3_videos import VideoUnavailable, fetch
    from lvr_trainer.data.video import VideoError

    hint = "upload the JSONL to that key or correct the dataset URI (list the prefix to see what is there)"
    try:
        return fetch(uri, timeout_s=timeout_s, refresh=True, missing_hint=hint)[0]
    except VideoUnavailable as err:
        raise DatasetUnavailable(f"cannot read dataset {uri}: {err.detail}") from None
    except VideoError as err:  # missing or truncated
        raise DatasetUnavailable(f"dataset {uri} not found: {err.detail}" if err.kind == "missing"
                                 else f"cannot read dataset {uri}: {err.detail}") from None
