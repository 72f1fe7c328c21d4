"""Frame sampling from video files with decord.

The index and size arithmetic are pure functions (tested directly); `sample_frames` is the thin
decord shell. Every way a video can be unusable raises one error type, `VideoError`, naming the file.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from lvr_trainer.config import FrameSampling


class VideoError(Exception):
    """A video that cannot be used. `kind`: missing | corrupt | truncated | too_short."""

    def __init__(self, path: str, kind: str, detail: str):
        self.path, self.kind, self.detail = path, kind, detail
        super().__init__(f"{path}: {kind} video: {detail}")


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    width: int
    height: int

    @property
    def duration(self) -> float:
        """Seconds, from the frame count and the average frame rate."""
        return self.num_frames / self.fps if self.fps > 0 else 0.0


@dataclass(frozen=True)
class SampledFrames:
    frames: np.ndarray  # (T, H, W, 3) uint8, RGB
    indices: np.ndarray  # (T,) int64, frame numbers in the file
    timestamps: np.ndarray  # (T,) float64, seconds from the start
    info: VideoInfo


def uniform_indices(total_frames: int, num: int) -> np.ndarray:
    """Centres of `num` equal segments of [0, total_frames): covers the whole video evenly.

    When `num` exceeds `total_frames`, frames repeat (the model still gets `num` frames).
    """
    if total_frames < 1 or num < 1:
        raise ValueError(f"need total_frames >= 1 and num >= 1, got {total_frames} and {num}")
    centres = (np.arange(num, dtype=np.float64) + 0.5) * total_frames / num
    return np.minimum(np.floor(centres).astype(np.int64), total_frames - 1)


def frames_for_rate(total_frames: int, native_fps: float, fps: float, max_frames: int) -> int:
    """How many frames sampling at `fps` yields for this video, at least 1 and at most `max_frames`."""
    duration = total_frames / native_fps
    return int(max(1, min(max_frames, math.floor(duration * fps + 1e-9), total_frames)))


def plan_indices(info: VideoInfo, sampling: FrameSampling) -> np.ndarray:
    """Frame numbers to decode for this video under `sampling` (uniform count or by rate)."""
    if sampling.num_frames is not None:
        num = sampling.num_frames
    else:
        num = frames_for_rate(info.num_frames, info.fps, sampling.fps, sampling.max_frames)
    return uniform_indices(info.num_frames, num)


def fit_size(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Height and width rounded to multiples of `factor`, scaled (aspect kept) into the pixel budget."""
    if height < 1 or width < 1:
        raise ValueError(f"bad frame size {height}x{width}")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / scale / factor) * factor)
        w = max(factor, math.floor(width / scale / factor) * factor)
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * scale / factor) * factor
        w = math.ceil(width * scale / factor) * factor
    return h, w


_FIRST_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")


def mp4_truncation(path: str) -> str | None:
    """Why an ISO-BMFF (mp4/mov) file is cut short, or None: a top-level box running past the end.

    Reads only box headers. Files that are not ISO-BMFF (or are intact) give None.
    """
    size = os.path.getsize(path)
    offset = 0
    with open(path, "rb") as fh:
        while offset + 8 <= size:
            fh.seek(offset)
            header = fh.read(16)
            box_size, box_type = int.from_bytes(header[:4], "big"), header[4:8]
            if offset == 0 and box_type not in _FIRST_BOXES:
                return None  # not ISO-BMFF
            if not box_type.isascii() or not box_type.decode("ascii", "replace").isprintable():
                return None  # not a box structure
            if box_size == 1 and len(header) >= 16:
                box_size = int.from_bytes(header[8:16], "big")
            elif box_size == 0:
                return None  # box extends to the end of the file by definition
            if box_size < 8:
                return None
            if offset + box_size > size:
                name = box_type.decode("ascii")
                return (f"box '{name}' at byte {offset} declares {box_size} bytes but the file ends "
                        f"at byte {size} ({offset + box_size - size} bytes missing)")
            offset += box_size
    return None


def _open(path: str, **size):
    import decord  # local: keeps `import lvr_trainer.data` free of native decoders

    if not os.path.exists(path):
        raise VideoError(path, "missing", "no such file; check the record's `video` path")
    if os.path.getsize(path) == 0:
        raise VideoError(path, "corrupt", "file is empty")
    try:
        return decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1, **size)
    except Exception as err:  # decord raises DECORDError / RuntimeError with ffmpeg's text
        cut = mp4_truncation(path)
        if cut:
            raise VideoError(path, "truncated", f"{cut}; re-copy or re-encode the file") from None
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise VideoError(path, "corrupt", f"decoder cannot open it ({text})") from None


def probe(path: str) -> VideoInfo:
    """Frame count and rate from the container; the size from the first (key) frame."""
    reader = _open(path)
    num = len(reader)
    if num == 0:
        raise VideoError(path, "corrupt", "the container lists no frames")
    try:
        height, width = reader[0].shape[:2]
    except Exception as err:
        raise VideoError(path, "corrupt", f"first frame does not decode ({err})") from None
    return VideoInfo(num, float(reader.get_avg_fps() or 0.0), int(width), int(height))


def sample_frames(path: str, sampling: FrameSampling, min_frames: int = 1) -> SampledFrames:
    """Decode the frames `sampling` asks for, resized to the pixel budget. Raises VideoError."""
    info = probe(path)
    if info.num_frames < min_frames:
        raise VideoError(path, "too_short", f"{info.num_frames} frames, need at least {min_frames}")
    indices = plan_indices(info, sampling)
    frames = read_frames(path, indices.tolist(), info, sampling)
    fps = info.fps if info.fps > 0 else 1.0
    return SampledFrames(frames, indices, indices / fps, info)


def read_frames(path: str, indices: list[int], info: VideoInfo, sampling: FrameSampling) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames at `indices` of a probed video, resized to `sampling`'s pixel budget.
    For callers that pick their own frame numbers (`data.build` decodes clip by clip). Raises VideoError."""
    height, width = fit_size(info.height, info.width, sampling.resize_factor,
                             sampling.min_pixels, sampling.max_pixels)
    reader = _open(path, width=width, height=height)
    try:
        return reader.get_batch(indices).asnumpy()
    except Exception as err:
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise VideoError(path, "truncated", f"frames listed in the header do not decode ({text})") from None
