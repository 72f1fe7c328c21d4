"""A model made ready for data parallelism: wrapped (DDP semantics, or FSDP2 with mixed precision), given
rank 0's weights, and loaded from a checkpoint's full optimizer state."""

from __future__ import annotations

import os

import torch

from lvr_trainer.config import ParallelConfig, ParallelStrategy, Precision
from lvr_trainer.parallel import collectives
from lvr_trainer.parallel.fsdp import shard_language_model
from lvr_trainer.parallel.grid import ProcessGrid
from lvr_trainer.parallel.timeouts import explain_timeout


def wrap_model(model: torch.nn.Module, cfg: ParallelConfig, grid: ProcessGrid,
               precision: Precision = Precision.fp32, offload: bool = False, *, keep_whole: torch.nn.Module):
    """Prepare `model` for data parallelism (once: a model already sharded is returned as it is).

    `ddp`: every rank keeps the whole model and, once per optimizer step (after all micro-batches),
    `lvr_trainer.parallel.sp_forward.reduce_gradients` averages gradients over the DP group and sums
    them over the SP group: DDP's semantics, one all-reduce per step. (torch's DDP wrapper is not used
    because the loops call the language model's parts directly, never the wrapper's forward.)
    `fsdp`: the whole language model sharded over every rank, SP peers included, with FSDP2
    (`lvr_trainer.parallel.fsdp`): parameters, gradients and AdamW state are 1/world per rank. `keep_whole`
    (the vision tower, frozen) stays whole on every rank. `hsdp`: the same, sharded over each node's ranks and
    replicated across nodes. `offload` (a frozen reference model): its shards wait in host memory between uses.

    Precision: the parameters are float32 (master weights; AdamW's state follows them) under both
    strategies. `bf16-mixed` under `fsdp` gives FSDP2's MixedPrecisionPolicy: bf16 copies gathered for
    compute (half the all-gather bytes), gradients reduce-scattered in float32 onto the float32 shards.
    Under `ddp` the model computes in bf16 by autocast (`lvr_trainer.train.precision.autocast_for`) over its
    float32 weights: one copy of the weights instead of two, float32 gradients for the all-reduce, nothing
    to copy back after each step, and the same numerics as the FSDP path.
    """
    if not is_fsdp(cfg, grid):
        return model
    frozen = list(keep_whole.parameters())     # whole on every rank; reduce_gradients if trained
    param_dtype = torch.bfloat16 if precision == Precision.bf16_mixed else None
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", grid.layout.world_size)) \
        if cfg.strategy == ParallelStrategy.hsdp else None
    return shard_language_model(model, grid, param_dtype, frozen, per_node=per_node, offload=offload)


def distribute_weights(model: torch.nn.Module, cfg: ParallelConfig, grid: ProcessGrid,
                       precision: Precision, offload: bool = False, *,
                       keep_whole: torch.nn.Module) -> torch.nn.Module:
    """Give every rank rank 0's weights, wrapped for data parallelism (`wrap_model`, `keep_whole` unsharded).

    Only global rank 0 reads the weights (one full copy in the job, not one per rank); the others pass
    a skeleton on the meta device (`load_model(..., device="meta")`), allocated here on their device
    and filled by broadcast: under `fsdp` each rank keeps only its shard of the decoder layers
    (`set_model_state_dict(broadcast_from_rank0=True)`), under `ddp` every tensor is broadcast whole.
    Buffers outside the state dict (rotary frequencies) are broadcast too, and tied weights (a tied
    lm_head) re-tied, since allocating a skeleton unties them.
    """
    if grid.layout.world_size == 1:
        return model
    sharded = is_fsdp(cfg, grid)
    full = model.state_dict() if sharded and grid.rank == 0 else {}     # rank 0's tensors, before sharding
    model = wrap_model(model, cfg, grid, precision, offload, keep_whole=keep_whole)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        model.to_empty(device=grid.device)
        if hasattr(model, "tie_weights"):
            model.tie_weights()
    with explain_timeout("sharing rank 0's weights"), torch.no_grad():
        if sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True,
                                                                        broadcast_from_rank0=True))
        else:
            for tensor in model.state_dict().values():
                collectives.broadcast(tensor, src=0)
        saved = set(model.state_dict())
        for name, buf in model.named_buffers():
            if name not in saved:
                collectives.broadcast(buf, src=0)
    return model


def is_fsdp(cfg: ParallelConfig, grid: ProcessGrid) -> bool:
    """Whether the model is sharded (fsdp or hsdp) in this job."""
    return cfg.strategy in (ParallelStrategy.fsdp, ParallelStrategy.hsdp) and grid.layout.world_size > 1


def load_full_states(model, optimizer, model_state: dict | None, optim_state: dict, cfg: ParallelConfig,
                     grid: ProcessGrid) -> None:
    """Load a full optimizer state from a checkpoint's trainer_state.pt (and, under FSDP, the model state too)."""
    if not is_fsdp(cfg, grid):
        optimizer.load_state_dict(optim_state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state, options=opts)
