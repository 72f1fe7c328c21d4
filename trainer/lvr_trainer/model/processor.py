"""Frames -> `pixel_values_videos`, `video_grid_thw` for Qwen2-VL / Qwen2.5-VL, in numpy (no torchvision).

Built from the processor settings (patch 14, temporal patch 2, spatial merge 2, CLIP mean/std), not
from transformers' code; tests/fixtures/qwen_vl_processor.npz (made by transformers' own processor)
proves the output is the same. Resizing is the sampler's job (`lvr_trainer.data.video.fit_size`):
frames must arrive with height and width multiples of patch_size x merge_size.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ProcessedVideo:
    """One video ready for the vision tower.

    pixel_values_videos: (grid_t * grid_h * grid_w, 3 * temporal_patch * patch * patch) float32
    video_grid_thw:      (1, 3) int64, patches along time, height, width
    second_per_grid_ts:  seconds of video per temporal patch (positions of Qwen2.5-VL's mRoPE), or None
    """

    pixel_values_videos: np.ndarray
    video_grid_thw: np.ndarray
    second_per_grid_ts: float | None = None

    @property
    def num_tokens(self) -> int:
        """Tokens the LLM sees for this video (after the 2x2 spatial merge)."""
        return int(self.pixel_values_videos.shape[0]) // 4

    def as_tensors(self):
        """(pixel_values_videos, video_grid_thw) as torch tensors (shares memory)."""
        import torch

        return torch.from_numpy(self.pixel_values_videos), torch.from_numpy(self.video_grid_thw)


def sampled_fps(num_sampled: int, total_frames: int, native_fps: float) -> float:
    """Rate of the sampled frames: `num_sampled / total_frames * native_fps` (what transformers uses)."""
    if total_frames < 1 or native_fps <= 0:
        raise ValueError(f"need total_frames >= 1 and native_fps > 0, got {total_frames} and {native_fps}")
    return num_sampled / total_frames * native_fps


@dataclass(frozen=True)
class VideoProcessor:
    """Qwen-VL video patchifier. Callable: `processor(frames (T, H, W, 3) uint8 RGB) -> ProcessedVideo`."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    rescale_factor: float = 1 / 255

    @classmethod
    def from_model_config(cls, config) -> VideoProcessor:
        """Settings from a Qwen-VL model config (`config.vision_config`); mean/std are CLIP's."""
        vc = getattr(config, "vision_config", config)
        return cls(patch_size=vc.patch_size, temporal_patch_size=vc.temporal_patch_size,
                   merge_size=vc.spatial_merge_size)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> VideoProcessor:
        """Settings from a model directory's video_preprocessor_config.json or preprocessor_config.json."""
        path = Path(path)
        for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
            if (path / name).is_file():
                raw = json.loads((path / name).read_text())
                known = {k: raw[k] for k in ("patch_size", "temporal_patch_size", "merge_size",
                                             "rescale_factor") if k in raw}
                for k in ("image_mean", "image_std"):
                    if k in raw:
                        known[k] = tuple(float(v) for v in raw[k])
                return cls(**known)
        raise FileNotFoundError(f"{path}: no video_preprocessor_config.json or preprocessor_config.json")

    @property
    def size_factor(self) -> int:
        """Height and width must be multiples of this (28 for Qwen-VL)."""
        return self.patch_size * self.merge_size

    def settings(self) -> dict:
        """Everything that changes the output, for cache keys (JSON-serialisable, stable)."""
        return {"kind": "qwen-vl-video", **asdict(self)}

    def grid_thw(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(grid_t, grid_h, grid_w) for frames of this shape; checks the size rules."""
        f = self.size_factor
        if height % f or width % f:
            raise ValueError(f"frame size {height}x{width} is not a multiple of {f}; sample frames with "
                             f"FrameSampling(resize_factor={f}) so the sampler resizes them")
        if num_frames < 1:
            raise ValueError("a video needs at least one frame")
        grid_t = -(-num_frames // self.temporal_patch_size)
        return grid_t, height // self.patch_size, width // self.patch_size

    def __call__(self, frames: np.ndarray, fps: float | None = None) -> ProcessedVideo:
        """Patchify `frames` (T, H, W, 3) uint8 RGB; `fps` is the sampled frame rate, if known."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected frames shaped (T, H, W, 3), got {frames.shape}")
        t, h, w, _ = frames.shape
        grid_t, grid_h, grid_w = self.grid_thw(t, h, w)
        x = frames.astype(np.float32) * np.float32(self.rescale_factor)  # (T, H, W, C)
        x = (x - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
        x = x.transpose(0, 3, 1, 2)  # (T, C, H, W)
        pad = grid_t * self.temporal_patch_size - t
        if pad:  # repeat the last frame to fill the last temporal patch
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)], axis=0)
        pixel_values = patchify(x, self.temporal_patch_size, self.patch_size, self.merge_size)
        spgt = self.temporal_patch_size / fps if fps else None
        return ProcessedVideo(pixel_values, np.array([[grid_t, grid_h, grid_w]], dtype=np.int64), spgt)


def patchify(x: np.ndarray, temporal_patch: int, patch: int, merge: int) -> np.ndarray:
    """(T, C, H, W) -> (grid_t * grid_h * grid_w, C * temporal_patch * patch * patch).

    Rows are ordered time-major, then by merge window (merge x merge neighbouring patches are
    consecutive rows), which is the order the vision tower's patch merger expects.
    """
    t, c, h, w = x.shape
    gt, gh, gw = t // temporal_patch, h // patch, w // patch
    x = x.reshape(gt, temporal_patch, c, gh // merge, merge, patch, gw // merge, merge, patch)
    # -> (gt, gh/m, gw/m, m, m, C, tp, p, p)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return np.ascontiguousarray(x.reshape(gt * gh * gw, c * temporal_patch * patch * patch), dtype=np.float32)
