"""The per-token log-probs of a padded or shared-prefix batch: SFT's loss, GRPO's old/reference prefills and
its update."""

from __future__ import annotations

import torch

from lvr_trainer.inputs.examples import Batch
from lvr_trainer.model.encode import encode_video, slice_embedder
from lvr_trainer.parallel.fsdp import gathered_root
from lvr_trainer.parallel.grid import ProcessGrid
from lvr_trainer.parallel.sp_forward import sp_forward_logprobs
from lvr_trainer.train.packing import PackedBatch


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
