"""`VideoEmbedder`: a video file -> its token embeddings, through the cache, alone or across ranks.

A hit needs no decoding: the key is computed from the container's header (frame count, rate, size),
the planned frame indices and the file's hash. A miss decodes, patchifies and encodes, then stores.
In a process group all ranks agree on hit/miss first (an all-reduce), so the collective encode runs
on every rank or on none; rank 0 writes the entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from lvr_trainer.cache.embedding_cache import EmbeddingCache
from lvr_trainer.cache.keys import embedding_key, file_digest
from lvr_trainer.cache.payload import CachedVideo
from lvr_trainer.config import FrameSampling
from lvr_trainer.model.encode import encode_video, vision_digest
from lvr_trainer.model.loading import vision_tower
from lvr_trainer.model.processor import VideoProcessor, sampled_fps
from lvr_trainer.parallel import collectives


@dataclass(frozen=True)
class VideoEmbedding:
    """embeds: (N, hidden); video_grid_thw: (1, 3); second_per_grid_ts for `rope_positions`."""

    embeds: torch.Tensor
    video_grid_thw: torch.Tensor
    second_per_grid_ts: float | None
    key: str
    hit: bool

    @property
    def num_tokens(self) -> int:
        return int(self.embeds.shape[0])


@dataclass(frozen=True)
class FramePlan:
    indices: list[int]
    height: int
    width: int
    fps: float


def plan_frames(path: str, sampling: FrameSampling) -> FramePlan:
    """Which frames `sample_frames` will decode, at what size, without decoding them."""
    from lvr_trainer.data.video import fit_size, plan_indices, probe

    info = probe(path)
    h, w = fit_size(info.height, info.width, sampling.resize_factor, sampling.min_pixels, sampling.max_pixels)
    indices = plan_indices(info, sampling).tolist()
    fps = sampled_fps(len(indices), info.num_frames, info.fps if info.fps > 0 else 1.0)
    return FramePlan(indices, h, w, fps)


class VideoEmbedder:
    def __init__(self, model, processor: VideoProcessor, cache: EmbeddingCache, sampling: FrameSampling,
                 group=None):
        if sampling.resize_factor % processor.size_factor:
            raise ValueError(f"sampling.resize_factor {sampling.resize_factor} must be a multiple of "
                             f"{processor.size_factor} (patch x merge) for this model")
        self.model, self.processor, self.cache, self.sampling, self.group = model, processor, cache, sampling, group
        self._digest: str | None = None

    def vision_digest(self) -> str:
        """Weights digest; recomputed every call while the vision tower is trainable."""
        if self._digest is None or any(p.requires_grad for p in vision_tower(self.model).parameters()):
            self._digest = vision_digest(self.model)
        return self._digest

    def key(self, path: str, plan: FramePlan) -> str:
        dtype = str(next(vision_tower(self.model).parameters()).dtype)
        return embedding_key(file_digest(path), plan.indices, (plan.height, plan.width),
                             self.processor.settings(), self.vision_digest(), dtype)

    def _all_hit(self, hit: bool) -> bool:
        if self.group is None or dist.get_world_size(self.group) == 1:
            return hit
        flag = collectives.group_tensor([1 if hit else 0], self.group)   # on the GPU under NCCL
        collectives.all_reduce(flag, op=dist.ReduceOp.MIN, group=self.group)
        return bool(flag.item())

    def _encode(self, path: str, plan: FramePlan) -> CachedVideo:
        from lvr_trainer.data.video import sample_frames

        frames = sample_frames(path, self.sampling)
        processed = self.processor(frames.frames, plan.fps)
        pixel_values, grid = processed.as_tensors()
        device = self.model.get_input_embeddings().weight.device
        embeds = encode_video(self.model, pixel_values.to(device), grid, self.group)
        return CachedVideo(embeds.detach(), grid, {"second_per_grid_ts": processed.second_per_grid_ts})

    def embed(self, path: str) -> VideoEmbedding:
        """The video's embeddings (from the cache when possible); `path` may be an s3:// URI (fetched to
        the local video cache first). Raises VideoError for bad or missing videos."""
        from lvr_trainer.data.s3_videos import local_video, named_as

        local = local_video(path)
        with named_as(path, local):
            return self._embed_local(local)

    def _embed_local(self, path: str) -> VideoEmbedding:
        plan = plan_frames(path, self.sampling)
        key = self.key(path, plan)
        entry = self.cache.lookup(key)
        hit = self._all_hit(entry is not None)
        if not hit:
            entry = self.cache.encoded(lambda: self._encode(path, plan))
            if self.group is None or dist.get_rank(self.group) == 0:
                self.cache.save(key, entry)
            if self.group is not None and dist.get_world_size(self.group) > 1:
                collectives.barrier(self.group)  # the entry is visible to every rank's next lookup
        spgt = entry.meta.get("second_per_grid_ts", self.processor.temporal_patch_size / plan.fps)
        return VideoEmbedding(entry.embeds, entry.video_grid_thw, spgt, key, hit)
