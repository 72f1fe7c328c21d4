"""What both training loops share below the loop: which records a step reads (a pure function of seed and
step), this rank's micro-batches of them, and the per-token log-probs of a padded or shared-prefix batch
(SFT's loss, GRPO's old/reference prefills and its update)."""

from __future__ import annotations

import torch

from lvr_trainer.model.encode import encode_video, slice_embedder
from lvr_trainer.parallel.fsdp import gathered_root
from lvr_trainer.parallel.grid import ProcessGrid
from lvr_trainer.parallel.sp_forward import sp_forward_logprobs
from lvr_trainer.inputs.examples import Batch
from lvr_trainer.train.packing import PackedBatch


def global_indices(num_records: int, seed: int, step: int, global_batch: int) -> list[int]:
    """Record indices of optimizer step `step`: consecutive slices of per-epoch permutations.

    Pure in (seed, step), so a resumed run sees exactly the data the uninterrupted run would.
    """
    out = []
    for pos in range(step * global_batch, (step + 1) * global_batch):
        epoch, offset = divmod(pos, num_records)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        out.append(int(torch.randperm(num_records, generator=g)[offset]))
    return out


def rank_micro_batches(indices: list[int], batch_size: int, grad_accum: int, dp_size: int,
                       dp_rank: int) -> list[list[int]]:
    """Split a global batch (grad_accum x dp_size x batch_size) into this DP rank's micro-batches."""
    per_micro = batch_size * dp_size
    return [indices[m * per_micro + dp_rank * batch_size: m * per_micro + (dp_rank + 1) * batch_size]
            for m in range(grad_accum)]


def response_logprobs(model, batch: Batch | PackedBatch, grid: ProcessGrid | None,
                      temperature: float = 1.0) -> torch.Tensor:
    """(B, S) log-probs of each position's next token (the loops mask with the reply / target mask); 0 where
    nothing is scored. A `PackedBatch` (shared prefix) gives the same values in the same layout. Under FSDP the
    root unit (embeddings, norm, LM head) is gathered around the calls (`parallel.fsdp.gathered_root`)."""
    with gathered_root(model):
        return _response_logprobs(model, batch, grid, temperature)


def _response_logprobs(model, batch: Batch | PackedBatch, grid: ProcessGrid | None, temperature: float) -> torch.Tensor:
    if isinstance(batch, PackedBatch):
        embed = slice_embedder(model, batch.input_ids, batch.video_embeds)      # each SP rank: its own slice
        packed = sp_forward_logprobs(model, embed, batch.position_ids, batch.target_ids,
                                     batch.layout(), grid, temperature=temperature)     # (R, T)
        return batch.unpack(packed)
    embeds = batch.video_embeds
    if embeds is None:  # trainable vision tower: encode each video with gradients, bypassing the cache
        sizes = batch.video_grid_thw.prod(-1).tolist()
        embeds = torch.cat([encode_video(model, pixels, grid[None])
                            for pixels, grid in zip(batch.pixel_values.split(sizes), batch.video_grid_thw)])
    return sp_forward_logprobs(model, slice_embedder(model, batch.input_ids, embeds), batch.position_ids,
                               batch.target_ids, batch.attention_mask, grid, temperature=temperature)
