"""Video -> token embeddings with the vision tower, alone or split across the ranks of a process group
(MR-SP stage 1), and splicing those embeddings into the LLM's input embeddings.

The parallel form is exact: Qwen-VL's vision tower attends only within one temporal patch group (its
`cu_seqlens` restart at every group), so encoding groups [a, b) on one rank and all-gathering in rank
order gives the single-process result.
"""

from __future__ import annotations

import hashlib
from contextlib import nullcontext

import torch
import torch.distributed as dist

from lvr_trainer.model.loading import vision_tower
from lvr_trainer.parallel.comm import all_gather_rows


def split_groups(grid_t: int, world: int) -> list[tuple[int, int]]:
    """Contiguous, balanced [start, stop) ranges of `grid_t` temporal groups for `world` ranks.

    The first `grid_t % world` ranks get one group more; ranks beyond `grid_t` get empty ranges.
    """
    if world < 1 or grid_t < 0:
        raise ValueError(f"need world >= 1 and grid_t >= 0, got {world} and {grid_t}")
    base, extra = divmod(grid_t, world)
    bounds, start = [], 0
    for r in range(world):
        stop = start + base + (1 if r < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def _run_tower(model, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
    """The vision tower's merged output (tokens, hidden); works for tensor or ModelOutput returns."""
    visual = vision_tower(model)
    dtype = next(visual.parameters()).dtype
    trainable = any(p.requires_grad for p in visual.parameters())
    with nullcontext() if trainable else torch.no_grad():
        out = visual(pixel_values.to(dtype), grid_thw=grid_thw)
    return out.pooler_output if hasattr(out, "pooler_output") else out


def encode_video(model, pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor,
                 group=None) -> torch.Tensor:
    """Token embeddings of one video: (grid_t * grid_h * grid_w / merge^2, hidden).

    pixel_values_videos: (grid_t * grid_h * grid_w, C * tp * p * p); video_grid_thw: (1, 3).
    With a process `group` of W > 1 ranks, every rank passes the same full inputs, encodes its
    share of the temporal groups (`split_groups`), and all ranks return the same full result.
    No gradient flows when the vision tower is frozen (the default).
    """
    grid = torch.as_tensor(video_grid_thw, dtype=torch.long).reshape(1, 3)
    if group is None or dist.get_world_size(group) == 1:
        return _run_tower(model, pixel_values_videos, grid)
    world = dist.get_world_size(group)
    t, h, w = (int(v) for v in grid[0])
    if pixel_values_videos.shape[0] != t * h * w:
        raise ValueError(f"pixel_values_videos has {pixel_values_videos.shape[0]} rows, grid {t}x{h}x{w} "
                         f"needs {t * h * w}")
    merge = vision_tower(model).spatial_merge_size
    per_group = h * w // (merge * merge)
    bounds = split_groups(t, world)
    start, stop = bounds[dist.get_rank(group)]
    hidden = model.get_input_embeddings().embedding_dim
    if stop > start:
        local = _run_tower(model, pixel_values_videos[start * h * w: stop * h * w],
                           torch.tensor([[stop - start, h, w]], dtype=torch.long))
    else:
        dtype = next(vision_tower(model).parameters()).dtype
        local = torch.zeros((0, hidden), dtype=dtype, device=pixel_values_videos.device)
    return all_gather_rows(local, [(b - a) * per_group for a, b in bounds], group)


def embed_inputs(model, input_ids: torch.Tensor, video_embeds: torch.Tensor) -> torch.Tensor:
    """Text embeddings with the video pad positions replaced by `video_embeds`.

    input_ids: (B, S); video_embeds: (N, hidden), N = number of video pad tokens in `input_ids`, in
    row-major order (batch row, then position). Returns inputs_embeds (B, S, hidden) in the model's
    dtype; gradients flow to the text embeddings (and to `video_embeds` if it requires grad).
    """
    video_id = model.config.video_token_id
    embeds = model.get_input_embeddings()(input_ids)
    mask = input_ids == video_id
    n = int(mask.sum())
    if n != video_embeds.shape[0]:
        raise ValueError(f"the prompt has {n} video tokens but {video_embeds.shape[0]} video embeddings were "
                         "given; build the prompt with the same video_grid_thw the embeddings came from")
    return embeds.masked_scatter(mask.unsqueeze(-1), video_embeds.to(embeds.device, embeds.dtype))


def slice_embedder(model, input_ids: torch.Tensor, video_embeds: torch.Tensor):
    """`embed(lo, hi)`: `embed_inputs` of positions [lo, hi) of every row only, `(B, hi - lo, hidden)`.

    What a sequence-parallel rank calls for its own slice, so no rank builds the whole `(B, T, hidden)`
    sequence (nor its gradient in backward). The video embeddings of the slice are the ones whose pad
    positions fall inside it, in the same row-major order `embed_inputs` fills them in.
    """
    video = input_ids == model.config.video_token_id                                    # (B, T)
    if int(video.sum()) != video_embeds.shape[0]:
        raise ValueError(f"the prompt has {int(video.sum())} video tokens but {video_embeds.shape[0]} video "
                         "embeddings were given; build the prompt with the same video_grid_thw the embeddings "
                         "came from")
    order = (video.flatten().cumsum(0) - 1).view(video.shape)                            # (B, T): embedding row

    def embed(lo: int, hi: int) -> torch.Tensor:
        ids = input_ids[:, lo:hi]
        rows = order[:, lo:hi][video[:, lo:hi]]
        return embed_inputs(model, ids, video_embeds[rows])
    return embed


def cached_video_kwargs(video_embeds: torch.Tensor, video_grid_thw: torch.Tensor, merge_size: int = 2) -> dict:
    """Model kwargs that hand pre-computed video embeddings to `forward` / `generate` (transformers >= 5.2x).

    Use with `input_ids`, `mm_token_type_ids` and `video_grid_thw`: the model builds its own 3D
    positions and splices `video_embeds` (N, hidden) in place of a vision pass.
    """
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    sizes = (torch.as_tensor(video_grid_thw).reshape(-1, 3).prod(-1) // (merge_size * merge_size)).tolist()
    return {"mm_encoder_outputs": {"video": BaseModelOutputWithPooling(
        pooler_output=tuple(torch.split(video_embeds, sizes)))}}


def vision_digest(model) -> str:
    """sha256 of the vision tower's parameters and buffers (names, dtypes, shapes, bytes).

    Part of every cache key: changing or fine-tuning the vision tower invalidates cached embeddings.
    """
    h = hashlib.sha256()
    state = vision_tower(model).state_dict()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
