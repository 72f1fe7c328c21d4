"""Stage 1: find the videos, split each into equal clips, and give each clip's frames as JPEG data URLs.

A video of D seconds gets n = round(D / clip_seconds) clips (at least one) of D / n seconds each, so
that no clip is a stub; each clip's k frames are the centres of k equal parts of it (the trainer's
uniform rule, `data.video.uniform_indices`, over n x k frames). Planning only probes the file; a clip's
frames are decoded when its caption request is built (`clip_images`), so memory holds the frames of
the calls in flight, not of a whole long video. s3:// videos are fetched into the local video cache
first (`data.remote`), like `lvr data validate`. A video that does not decode raises VideoError (the
caller skips and names it); S3 being unreachable raises VideoUnavailable (the caller stops).
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lvr_trainer.config import FrameSampling
from lvr_trainer.data.location import is_s3
from lvr_trainer.data.s3_videos import local_video, named_as
from lvr_trainer.data.video import VideoError, VideoInfo, probe, read_frames, uniform_indices

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v")
JPEG_QUALITY = 85


class BuildInputError(Exception):
    """The --videos location cannot be listed, or holds no videos; the message says how to fix it."""


@dataclass(frozen=True)
class VideoSource:
    """`video_id`: unique and readable (the path under the root, without suffix); `location`: an
    absolute local path or an s3:// URI, what the dataset rows name."""

    video_id: str
    location: str


@dataclass(frozen=True)
class Clip:
    index: int
    start: float  # seconds
    end: float
    frame_indices: tuple[int, ...]  # frame numbers in the file, in time order


@dataclass(frozen=True)
class VideoClips:
    """A planned video: `local` is the decodable file (the s3:// object's cached copy)."""

    source: VideoSource
    local: str
    info: VideoInfo
    sampling: FrameSampling  # the pixel budget frames are resized to
    clips: tuple[Clip, ...]

    @property
    def duration(self) -> float:
        return round(self.info.duration, 3)


def video_id_for(relative: str) -> str:
    """`trips/day 1/a.mp4` -> `trips-day_1-a`: the path under the root, safe in ids and file names."""
    stem = str(PurePosixPath(relative).with_suffix(""))
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem.replace("/", "-")).strip("_") or "video"


def clip_bounds(duration: float, clip_seconds: float) -> list[tuple[float, float]]:
    """(start, end) of round(duration / clip_seconds) equal clips, at least one, covering the video."""
    if duration <= 0 or clip_seconds <= 0:
        raise ValueError(f"need a positive duration and clip length, got {duration} and {clip_seconds}")
    n = max(1, round(duration / clip_seconds))
    step = duration / n
    return [(round(i * step, 3), round((i + 1) * step, 3)) for i in range(n)]


def list_videos(root: str) -> list[VideoSource]:
    """Every video file under a local directory or an s3:// prefix, in path order."""
    if is_s3(root):
        return _list_s3(root)
    base = Path(root).expanduser()
    if not base.is_dir():
        raise BuildInputError(f"--videos {root}: no such directory; give a folder of video files or an "
                              "s3://bucket/prefix")
    files = sorted(p for p in base.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    return [VideoSource(video_id_for(p.relative_to(base).as_posix()), str(p.resolve())) for p in files]


def _list_s3(root: str) -> list[VideoSource]:
    from lvr_trainer.storage.s3 import S3Store
    from lvr_trainer.storage.errors import StoreError
    from lvr_trainer.data.s3_videos import remote_unsupported_reason

    reason = remote_unsupported_reason()
    if reason:
        raise BuildInputError(f"--videos {root}: {reason}")
    try:
        store = S3Store.from_uri(root)
        names = [name for name, _ in store.list_objects() if PurePosixPath(name).suffix.lower() in VIDEO_SUFFIXES]
    except StoreError as err:
        raise BuildInputError(f"--videos {root}: cannot list the prefix: {err}") from None
    prefix = store.prefix
    return [VideoSource(video_id_for(name[len(prefix):].lstrip("/")), f"s3://{store.bucket}/{name}")
            for name in names]


def jpeg_data_url(frame) -> str:
    """An (H, W, 3) uint8 RGB frame as a base64 JPEG data URL (the OpenAI chat image format)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def plan_video(source: VideoSource, clip_seconds: float, frames_per_clip: int, max_pixels: int) -> VideoClips:
    """Probe the video and plan its clips. Raises VideoError (skip the video) or VideoUnavailable (stop)."""
    local = local_video(source.location)
    with named_as(source.location, local):
        info = probe(local)
    if info.duration <= 0:
        raise VideoError(source.location, "corrupt", "the container gives no frame rate, so no duration")
    bounds = clip_bounds(info.duration, clip_seconds)
    indices = uniform_indices(info.num_frames, len(bounds) * frames_per_clip).tolist()
    k = frames_per_clip
    clips = tuple(Clip(i, start, end, tuple(indices[i * k:(i + 1) * k])) for i, (start, end) in enumerate(bounds))
    sampling = FrameSampling(num_frames=k, max_pixels=max_pixels, min_pixels=min(56 * 56, max_pixels))
    return VideoClips(source, local, info, sampling, clips)


def clip_images(video: VideoClips, clip: Clip) -> list[str]:
    """The clip's frames as JPEG data URLs. Raises VideoError (naming the dataset's location)."""
    with named_as(video.source.location, video.local):
        frames = read_frames(video.local, list(clip.frame_indices), video.info, video.sampling)
    return [jpeg_data_url(f) for f in frames]
