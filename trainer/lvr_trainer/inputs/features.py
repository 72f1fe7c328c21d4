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
from lvr_trainer.cache.embedding_cache import EmbeddingCache
from lvr_trainer.config import CacheConfig, FrameSampling, TrainerConfig
from lvr_trainer.data.s3_videos import local_video
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


DEFAULT_MEMORY_BYTES = CacheConfig.model_fields["memory_bytes"].default


class VideoFeatureSource:
    """`source(record) -> VideoFeatures`. `vision_passes` counts actual vision-tower runs."""

    def __init__(self, model, processor: VideoProcessor, sampling: FrameSampling, base_dir: str | Path,
                 cache: EmbeddingCache | None = None, trainable_vision: bool = False, group=None,
                 memory_bytes: int = DEFAULT_MEMORY_BYTES):
        self.processor, self.sampling, self.base_dir = processor, sampling, Path(base_dir)
        self.trainable_vision, self.memory_bytes = trainable_vision, memory_bytes
        self.embedder = VideoEmbedder(model, processor, cache or EmbeddingCache(None), sampling, group)
        self._memory: OrderedDict[str, VideoFeatures] = OrderedDict()
        self.held_bytes = 0
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
            features = self._remember(path, features)
        return features

    def _remember(self, path: str, features: VideoFeatures) -> VideoFeatures:
        """Keep `features` in host memory (never on the GPU: batches move them there), least recently
        used evicted beyond `memory_bytes` (they come back from the embedding cache when needed)."""
        features = VideoFeatures(features.embeds.to("cpu"), features.grid_thw.to("cpu"), features.second_per_grid_t)
        size = features.embeds.numel() * features.embeds.element_size()
        self._memory[path] = features
        self.held_bytes += size
        while self.held_bytes > self.memory_bytes and len(self._memory) > 1:
            _, old = self._memory.popitem(last=False)
            self.held_bytes -= old.embeds.numel() * old.embeds.element_size()
        return features


def make_feature_source(model, processor, cfg: TrainerConfig, base_dir: str | Path,
                        group=None) -> VideoFeatureSource:
    """Video features through the configured embedding cache (bypassed when the vision tower trains).
    `base_dir` resolves relative videos; `load_split`'s records have none left, so its base is only kept."""
    trainable = not cfg.model.freeze_vision
    cache = EmbeddingCache.from_config(cfg.cache) if not trainable else None
    return VideoFeatureSource(model, processor, cfg.data.sampling, base_dir, cache, trainable, group,
                              cfg.cache.memory_bytes)
