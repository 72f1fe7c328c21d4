"""The job's process groups, from start to end: the DP x SP grid built from torchrun's environment with the
configured timeout on every group, and torn down together when a run finishes."""

from __future__ import annotations

import atexit
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from lvr_trainer.config import ConfigError, ParallelConfig
from lvr_trainer.parallel import collectives
from lvr_trainer.parallel.grid import ProcessGrid, init_process_grid, single_process_grid
from lvr_trainer.parallel.timeouts import remember_timeout


def setup_grid(cfg: ParallelConfig) -> ProcessGrid:
    """The DP x SP grid from torchrun's environment; a single-process grid without torchrun.

    Every process group (world, SP, DP) gets `cfg.timeout_s`: torch's defaults (10 minutes under NCCL)
    are shorter than a 7B checkpoint write that the other ranks wait for, and longer than anyone should
    wait for a crashed peer."""
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
    remember_timeout(timeout_s)
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
