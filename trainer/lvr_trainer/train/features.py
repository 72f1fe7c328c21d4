"""Video features for the loops: decode -> patchify -> vision tower once per video, then reuse.

MR-SP stage 1: with the vision tower frozen, a video's embeddings depend only on the video, the
sampling and the tower, so they are computed once (through `VideoEmbedder` and the shared
embedding cache) and kept in memory for every epoch, rollout and prefill of this process.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from lvr_trainer.cache.embedder import VideoEmbedder, plan_frames
from lvr_trainer.cache.front import EmbeddingCache
from lvr_trainer.config import FrameSampling
from lvr_trainer.data.remote import local_video
from lvr_trainer.data.schema import VideoQARecord
from lvr_trainer.data.video import sample_frames
from lvr_trainer.model.processor import VideoProcessor


@dataclass
class VideoFeatures:
    """What the language model needs of one video.

    embeds:       (N, hidden) video token embeddings (None when the vision tower is trained)
    grid_thw:     (1, 3) int64
    second_per_grid_t: seconds of video per temporal patch (Qwen2.5-VL mRoPE), or None
    pixel_values: (grid_t * grid_h * grid_w, C * 2 * 14 * 14) float32, only when the tower trains
    """

    embeds: torch.Tensor | None
    grid_thw: torch.Tensor
    second_per_grid_t: float | None
    pixel_values: torch.Tensor | None = None


class VideoFeatureSource:
    """`source(record) -> VideoFeatures`. `vision_passes` counts actual vision-tower runs."""

    def __init__(self, model, processor: VideoProcessor, sampling: FrameSampling, base_dir: str | Path,
                 cache: EmbeddingCache | None = None, trainable_vision: bool = False, group=None,
                 max_in_memory: int = 100_000):
        self.processor, self.sampling, self.base_dir = processor, sampling, Path(base_dir)
        self.trainable_vision, self.max_in_memory = trainable_vision, max_in_memory
        self.embedder = VideoEmbedder(model, processor, cache or EmbeddingCache(None), sampling, group)
        self._memory: OrderedDict[str, VideoFeatures] = OrderedDict()
        self.vision_passes = 0
        self.memory_hits = 0

    def _features(self, path: str) -> VideoFeatures:
        if self.trainable_vision:  # encoded inside the training step, with gradients, bypassing the cache
            path = local_video(path)  # s3:// videos: the local copy (the embedder does this itself)
            plan = plan_frames(path, self.sampling)
            processed = self.processor(sample_frames(path, self.sampling).frames, plan.fps)
            pixel_values, grid = processed.as_tensors()
            return VideoFeatures(None, grid, processed.second_per_grid_ts, pixel_values)
        emb = self.embedder.embed(path)
        self.vision_passes += not emb.hit
        return VideoFeatures(emb.embeds, emb.video_grid_thw, emb.second_per_grid_ts)

    def __call__(self, record: VideoQARecord) -> VideoFeatures:
        path = record.video_path(self.base_dir)
        if not self.trainable_vision and path in self._memory:
            self.memory_hits += 1
            self._memory.move_to_end(path)
            return self._memory[path]
        features = self._features(path)
        if not self.trainable_vision:
            self._memory[path] = features
            if len(self._memory) > self.max_in_memory:
                self._memory.popitem(last=False)
        return features
