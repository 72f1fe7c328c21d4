"""Data-parallel wrapping (DDP or FSDP) over the process grid, and full state dicts for checkpoints."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from lvr_trainer.config import ConfigError, ParallelConfig, ParallelStrategy
from lvr_trainer.runnable import parallel_problems, raise_problems
from lvr_trainer.parallel.grid import ProcessGrid, init_process_grid, single_process_grid


def setup_grid(cfg: ParallelConfig) -> ProcessGrid:
    """The DP x SP grid from torchrun's environment; a single-process grid without torchrun."""
    raise_problems(parallel_problems(cfg), "parallel")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return init_process_grid(cfg.sequence_parallel)
    if cfg.sequence_parallel > 1:
        raise ConfigError(f"parallel.sequence_parallel={cfg.sequence_parallel} needs that many processes: "
                         f"launch with torchrun --nproc_per_node={cfg.sequence_parallel} (or more)")
    return single_process_grid("cuda" if torch.cuda.is_available() else "cpu")


def wrap_model(model: torch.nn.Module, cfg: ParallelConfig, grid: ProcessGrid):
    """Prepare `model` for data parallelism.

    `ddp`: every rank keeps the whole model and, once per optimizer step (after all micro-batches),
    `lvr_trainer.parallel.sp_forward.reduce_gradients` averages gradients over the DP group and sums
    them over the SP group: DDP's semantics, one all-reduce per step. (torch's DDP wrapper is not used
    because the loops call the language model's parts directly, never the wrapper's forward.)
    `fsdp`: each decoder layer's parameters sharded over the data-parallel ranks with FSDP2
    (`fully_shard`): gathered for its forward and backward, gradients reduce-scattered. The rest
    (embeddings, final norm, lm_head, the frozen vision tower) stays replicated; its gradients are
    averaged by `reduce_gradients`, which skips the sharded (DTensor) ones.
    """
    if not is_fsdp(cfg, grid):
        return model
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.language_model.layers:
        fully_shard(layer, mesh=_dp_mesh(grid))
    return model


def _dp_mesh(grid: ProcessGrid):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(grid.device, (grid.dp_size,))


def is_fsdp(cfg: ParallelConfig, grid: ProcessGrid) -> bool:
    return cfg.strategy == ParallelStrategy.fsdp and grid.layout.world_size > 1 and grid.sp_size == 1


def full_states(model, optimizer, cfg: ParallelConfig, grid: ProcessGrid) -> tuple[dict | None, dict | None]:
    """(model state, optimizer state), whole, on CPU, for saving from rank 0. Collective under FSDP:
    every rank must call it. (None, None) means: use the plain module's own state dicts."""
    if not is_fsdp(cfg, grid):
        return None, None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(model, optimizer, options=opts)


def load_full_states(model, optimizer, model_state: dict | None, optim_state: dict, cfg: ParallelConfig,
                     grid: ProcessGrid) -> None:
    """Load a full optimizer state saved by `full_states` (and, under FSDP, the model state too)."""
    if not is_fsdp(cfg, grid):
        optimizer.load_state_dict(optim_state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state, options=opts)


def all_reduce_sum(value: float, device, group=None) -> float:
    if not dist.is_available() or not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, group=group)
    return float(t.item())


def clip_grad_norm(model: torch.nn.Module, max_norm: float | None, grid: ProcessGrid) -> float:
    """Clip all gradients to a global L2 norm (after they are reduced); returns the norm before clipping.

    Sharded (FSDP DTensor) gradients contribute their local shard's squares, summed over the DP group.
    """
    local, sharded = [], []
    for p in model.parameters():
        if p.grad is not None:
            (sharded if hasattr(p.grad, "placements") else local).append(p.grad)
    total = sum(float(g.detach().float().pow(2).sum()) for g in local)
    if sharded:
        shard_sq = torch.tensor([sum(float(g.to_local().float().pow(2).sum()) for g in sharded)],
                                dtype=torch.float64)
        dist.all_reduce(shard_sq, group=grid.dp_group)
        total += float(shard_sq.item())
    norm = total ** 0.5
    if max_norm is not None and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in local + sharded:
            g.mul_(scale)
    return norm
