"""`lvr data validate`: check every row of a dataset file; a bad row is counted, never fatal."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lvr_trainer.config import FrameSampling
from lvr_trainer.data.location import open_dataset
from lvr_trainer.data.s3_videos import (
    VideoUnavailable,
    is_remote,
    local_video,
    named_as,
    remote_unsupported_reason,
)
from lvr_trainer.data.schema import RowError, VideoQARecord, iter_rows
from lvr_trainer.data.video import VideoError, VideoInfo, probe, sample_frames

# Row error kinds in report order, each with a one-line hint on fixing it.
ERROR_KINDS: dict[str, str] = {
    "json": "the line is not a JSON object",
    "schema": "a field is missing, unknown or of the wrong type",
    "answer": "the answer is not one of A, B, C, D",
    "duplicate_id": "two rows share an id; ids must be unique",
    "video_missing": ("the video file or s3:// object does not exist (relative paths resolve against the "
                      "JSONL's directory, or --video-root)"),
    "video_corrupt": "the video cannot be opened by the decoder",
    "video_truncated": "the video is cut short: frames in its index do not decode",
    "video_too_short": "the video has fewer frames than the sampler needs",
}


@dataclass
class ValidationReport:
    path: str
    total: int = 0
    errors: list[RowError] = field(default_factory=list)
    videos_checked: int = 0
    remote_unchecked: int = 0  # s3:// videos not checked because S3 is not configured here
    remote_reason: str | None = None  # why they were not checked
    categories: Counter = field(default_factory=Counter)

    @property
    def valid(self) -> int:
        return self.total - len(self.errors)

    @property
    def error_rate(self) -> float:
        return len(self.errors) / self.total if self.total else 0.0

    def counts(self) -> dict[str, int]:
        c = Counter(e.kind for e in self.errors)
        return {k: c[k] for k in ERROR_KINDS if c[k]}

    def examples(self, per_kind: int) -> dict[str, list[RowError]]:
        """The first `per_kind` errors of each kind, so every kind of problem is shown."""
        out: dict[str, list[RowError]] = {}
        for e in self.errors:
            bucket = out.setdefault(e.kind, [])
            if len(bucket) < per_kind:
                bucket.append(e)
        return {k: out[k] for k in ERROR_KINDS if k in out}

    def to_dict(self, per_kind: int = 3) -> dict:
        return {
            "path": self.path, "rows": self.total, "valid": self.valid, "invalid": len(self.errors),
            "error_rate": round(self.error_rate, 6), "videos_checked": self.videos_checked,
            "remote_unchecked": self.remote_unchecked, "remote_reason": self.remote_reason,
            "categories": dict(self.categories), "errors": self.counts(),
            "examples": {k: [e.__dict__ for e in v] for k, v in self.examples(per_kind).items()},
        }


class _VideoChecker:
    """Decodes each distinct video once (many questions share a video)."""

    def __init__(self, sampling: FrameSampling, min_frames: int, decode: bool):
        self.sampling, self.min_frames, self.decode = sampling, min_frames, decode
        self.seen: dict[str, VideoError | VideoInfo] = {}

    def check(self, path: str) -> VideoError | VideoInfo:
        """The video's info or its error; s3:// videos are fetched first. Raises VideoUnavailable."""
        if path not in self.seen:
            try:
                local = local_video(path)
                with named_as(path, local):
                    self.seen[path] = self._check_local(local)
            except VideoUnavailable:
                raise
            except VideoError as err:
                self.seen[path] = err
        return self.seen[path]

    def _check_local(self, path: str) -> VideoInfo:
        if self.decode:
            return sample_frames(path, self.sampling, self.min_frames).info
        info = probe(path)
        if info.num_frames < self.min_frames:
            raise VideoError(path, "too_short", f"{info.num_frames} frames, need {self.min_frames}")
        return info


def validate_file(path: str | Path, sampling: FrameSampling | None = None, min_frames: int | None = None,
                  check_videos: bool = True, decode: bool = True,
                  video_root: str | Path | None = None) -> ValidationReport:
    """Check schema, answers, unique ids and (optionally) that each video decodes with enough frames.

    `path` is a local JSONL or an s3:// URI (`data.location`); relative videos resolve against its
    directory, or against `video_root` (a directory or s3:// prefix). `min_frames` defaults to the
    sampler's frame count (so no frame has to be repeated). s3:// videos are downloaded (`data.remote`)
    and checked like local ones; without an S3 endpoint configured they are counted in
    `remote_unchecked`, with the reason. Raises VideoUnavailable when S3 cannot be used for videos,
    DatasetUnavailable when an s3:// JSONL cannot be fetched, OSError for an unreadable local file.
    """
    sampling = sampling or FrameSampling()
    if min_frames is None:
        min_frames = sampling.num_frames or 1
    dataset = open_dataset(path, video_root)
    report = ValidationReport(dataset.location)
    checker = _VideoChecker(sampling, min_frames, decode)
    ids: dict[str, int] = {}
    remote_reason = remote_unsupported_reason() if check_videos else None
    for line, row in iter_rows(dataset.local):
        report.total += 1
        if isinstance(row, RowError):
            report.errors.append(row)
            continue
        video = dataset.video(row)
        skip_remote = is_remote(video) and remote_reason is not None
        if check_videos and skip_remote:
            report.remote_unchecked += 1
            report.remote_reason = remote_reason
        problem = _check_record(line, row, ids, checker, video, check_videos and not skip_remote)
        if problem:
            report.errors.append(problem)
        else:
            report.categories[row.category] += 1
    report.videos_checked = len(checker.seen)
    return report


def _check_record(line: int, record: VideoQARecord, ids: dict[str, int], checker: _VideoChecker,
                  video: str, check_video: bool) -> RowError | None:
    if record.id in ids:
        return RowError(line, "duplicate_id", f"id '{record.id}' first used on line {ids[record.id]}", record.id)
    ids[record.id] = line
    if not check_video:
        return None
    result = checker.check(video)
    if isinstance(result, VideoError):
        return RowError(line, f"video_{result.kind}", str(result), record.id)
    return None
