"""Process groups (timeout from the config), data-parallel wrapping (DDP, or FSDP2 with mixed precision),
weights from rank 0 to the others, full state dicts for checkpoints, and collectives whose timeout says
which setting to change."""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from lvr_trainer.config import ConfigError, ParallelConfig, ParallelStrategy, Precision
from lvr_trainer.runnable import parallel_problems, raise_problems
from lvr_trainer.parallel.grid import ProcessGrid, init_process_grid, single_process_grid
from lvr_trainer.model.loading import vision_tower
from lvr_trainer.parallel import collectives
from lvr_trainer.parallel.fsdp import shard_language_model
from lvr_trainer.train import heartbeat

# parallel.timeout_s of this process's groups (set by setup_grid), quoted when a collective times out.
_timeout_s: float | None = None


class CollectiveTimeout(RuntimeError):
    """A collective waited longer than `parallel.timeout_s` for the other ranks."""


def setup_grid(cfg: ParallelConfig) -> ProcessGrid:
    """The DP x SP grid from torchrun's environment; a single-process grid without torchrun.

    Every process group (world, SP, DP) gets `cfg.timeout_s`: torch's defaults (10 minutes under NCCL)
    are shorter than a 7B checkpoint write that the other ranks wait for, and longer than anyone should
    wait for a crashed peer."""
    raise_problems(parallel_problems(cfg), "parallel")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _init_world(cfg.timeout_s)
        grid = init_process_grid(cfg.sequence_parallel)
        for group in (grid.sp_group, grid.dp_group):
            _set_group_timeout(group, cfg.timeout_s)
        return grid
    if cfg.sequence_parallel > 1:
        raise ConfigError(f"parallel.sequence_parallel={cfg.sequence_parallel} needs that many processes: "
                         f"launch with torchrun --nproc_per_node={cfg.sequence_parallel} (or more)")
    return single_process_grid("cuda" if torch.cuda.is_available() else "cpu")


def _init_world(timeout_s: float) -> None:
    """The default process group (NCCL on GPUs, else gloo) with the configured timeout."""
    global _timeout_s
    _timeout_s = timeout_s
    if dist.is_initialized():
        return
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    atexit.register(_destroy_world)


def leave_world() -> None:
    """End a run that finished on every rank: wait for the others, then destroy the process groups. A rank
    whose gloo groups are still alive when its interpreter exits can abort (`terminate called without an
    active exception`) while a peer tears its own down; torch asks programs to destroy them first."""
    if dist.is_initialized():
        collectives.barrier()
        _destroy_world()


def _destroy_world() -> None:
    """Destroy every process group (no barrier: also the exit path of a failed rank)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _set_group_timeout(group, timeout_s: float) -> None:
    """Give a subgroup the world's timeout: `new_group` (in parallel.grid) otherwise takes the backend's
    default. torch exposes this only as `_set_pg_timeout`; without it the default stays (said on stderr)."""
    setter = getattr(dist.distributed_c10d, "_set_pg_timeout", None)
    if group is None:
        return
    if setter is None:
        print(f"parallel.timeout_s={timeout_s:g} applies to the world group only: this torch cannot change "
              "a subgroup's timeout", file=sys.stderr)
        return
    setter(timedelta(seconds=timeout_s), group)


_TIMEOUT_TEXT = re.compile(r"timed out|timing out|timeout", re.IGNORECASE)
_BACKEND_TEXT = ("gloo", "NCCL", "c10d", "ProcessGroup")


_PEER_LOST_TEXT = re.compile(r"connection closed by peer|connection reset by peer|broken pipe|"
                             r"connection refused", re.IGNORECASE)


def _from_torch_distributed(err: BaseException) -> bool:
    return isinstance(err, dist.DistError) or any(s in str(err) for s in _BACKEND_TEXT)


def _is_peer_lost(err: BaseException) -> bool:
    """A collective that failed because another rank's process is gone (gloo's socket errors)."""
    return _from_torch_distributed(err) and bool(_PEER_LOST_TEXT.search(str(err)))


def _is_collective_timeout(err: BaseException) -> bool:
    """A timeout raised by torch.distributed (gloo's `Timed out waiting ...ms`, NCCL's watchdog, the
    store), not any error that mentions a timeout (an S3 request's, say)."""
    return _from_torch_distributed(err) and bool(_TIMEOUT_TEXT.search(str(err)))


@contextlib.contextmanager
def explain_timeout(what: str):
    """`with explain_timeout("checkpoint save"):` turns a collective's timeout inside into a
    CollectiveTimeout that names `parallel.timeout_s` and says what to do; other errors pass unchanged.
    (Under NCCL a timed-out collective is usually ended by torch's watchdog, which aborts the process
    and logs `Timeout(ms)=...`; only errors that reach Python can be explained here.)"""
    try:
        yield
    except RuntimeError as err:
        peer_lost = _is_peer_lost(err)
        if isinstance(err, CollectiveTimeout) or not (peer_lost or _is_collective_timeout(err)):
            raise
        rank = dist.get_rank() if dist.is_initialized() else 0
        where = heartbeat.report(str(err), peer_lost)      # read from the store only for a collective's failure
        where = f" Where the ranks are: {where}." if where else ""
        if peer_lost:
            raise CollectiveTimeout(
                f"{what}: rank {rank} lost another rank mid-collective (its process or pod is gone).{where} The "
                f"gang restarts from its last checkpoint. ({type(err).__name__}: {str(err)[:300]})") from err
        limit = f"{_timeout_s:g} s" if _timeout_s is not None else "its default"
        raise CollectiveTimeout(
            f"{what}: rank {rank} waited longer than parallel.timeout_s ({limit}) for the other ranks.{where} "
            "Look for the first error in the behind rank's log (a crash, a video that takes minutes to decode, an "
            "S3 or disk stall); if the wait is expected (a long checkpoint write or download), raise "
            f"parallel.timeout_s in the config. ({type(err).__name__}: {str(err)[:300]})") from err


def wrap_model(model: torch.nn.Module, cfg: ParallelConfig, grid: ProcessGrid,
               precision: Precision = Precision.fp32, offload: bool = False):
    """Prepare `model` for data parallelism (once: a model already sharded is returned as it is).

    `ddp`: every rank keeps the whole model and, once per optimizer step (after all micro-batches),
    `lvr_trainer.parallel.sp_forward.reduce_gradients` averages gradients over the DP group and sums
    them over the SP group: DDP's semantics, one all-reduce per step. (torch's DDP wrapper is not used
    because the loops call the language model's parts directly, never the wrapper's forward.)
    `fsdp`: the whole language model sharded over every rank, SP peers included, with FSDP2
    (`lvr_trainer.parallel.fsdp`): parameters, gradients and AdamW state are 1/world per rank. The frozen
    vision tower stays whole on every rank. `hsdp`: the same, sharded over each node's ranks and replicated
    across nodes. `offload` (a frozen reference model): its shards wait in host memory between uses.

    Precision: the parameters are float32 (master weights; AdamW's state follows them) under both
    strategies. `bf16-mixed` under `fsdp` gives FSDP2's MixedPrecisionPolicy: bf16 copies gathered for
    compute (half the all-gather bytes), gradients reduce-scattered in float32 onto the float32 shards.
    Under `ddp` the model computes in bf16 by autocast (`lvr_trainer.train.loop.autocast_for`) over its
    float32 weights: one copy of the weights instead of two, float32 gradients for the all-reduce, nothing
    to copy back after each step, and the same numerics as the FSDP path.
    """
    if not is_fsdp(cfg, grid):
        return model
    frozen = list(vision_tower(model).parameters())     # whole on every rank; reduce_gradients if trained
    param_dtype = torch.bfloat16 if precision == Precision.bf16_mixed else None
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", grid.layout.world_size)) \
        if cfg.strategy == ParallelStrategy.hsdp else None
    return shard_language_model(model, grid, param_dtype, frozen, per_node=per_node, offload=offload)


def distribute_weights(model: torch.nn.Module, cfg: ParallelConfig, grid: ProcessGrid,
                       precision: Precision, offload: bool = False) -> torch.nn.Module:
    """Give every rank rank 0's weights, wrapped for data parallelism (`wrap_model`).

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
    model = wrap_model(model, cfg, grid, precision, offload)
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


def all_reduce_sum(value: float, device, group=None) -> float:
    if not dist.is_available() or not dist.is_initialized():
        return value
    t = collectives.group_tensor([value], group, dtype=torch.float64)
    with explain_timeout("summing a metric over ranks"):
        collectives.all_reduce(t, group=group)
    return float(t.item())


def barrier(what: str) -> None:
    """Wait for every rank (no-op without torch.distributed); a timeout names `what` and the setting."""
    if dist.is_available() and dist.is_initialized():
        with explain_timeout(what):
            collectives.barrier()


def clip_grad_norm(model: torch.nn.Module, max_norm: float | None, grid: ProcessGrid) -> float:
    """Clip all gradients to a global L2 norm (after they are reduced); returns the norm before clipping.

    Whole gradients (DDP) are the same on every rank; sharded ones (FSDP DTensors) give their norm as a
    partial result that DTensor reduces over the mesh. Foreach kernels, one host sync for the whole model."""
    local, sharded = [], []
    for p in model.parameters():
        if p.grad is not None:
            (sharded if hasattr(p.grad, "placements") else local).append(p.grad)
    squares = torch.zeros((), dtype=torch.float64, device=grid.device)
    if local:
        squares = squares + torch.nn.utils.get_total_norm(local).double().pow(2)
    if sharded:
        total = torch.nn.utils.get_total_norm(sharded)
        squares = squares + (total.full_tensor() if hasattr(total, "full_tensor") else total).double().pow(2)
    norm = float(squares.sqrt())
    if max_norm is not None and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        if local:
            torch._foreach_mul_(local, scale)
        for g in sharded:
            g.mul_(scale)
    return norm
