"""The process grid: world = data_parallel x sequence_parallel, built from torchrun's environment.

Ranks are laid out SP-major: rank = dp_rank * SP + sp_rank, so the SP peers of one sequence are
consecutive ranks (on one node when SP divides the GPUs per node, where all-to-all is cheapest).

    world 4, SP 2:   sp groups [0, 1] [2, 3]     dp groups [0, 2] [1, 3]

`plan_grid` and `check_attention_heads` are pure and raise `ValueError` with what to change;
`init_process_grid` is the thin torch.distributed shell around them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GridLayout:
    """Sizes of the grid and which ranks form each group (pure; no process groups)."""

    world_size: int
    sp_size: int
    dp_size: int

    def coords(self, rank: int) -> tuple[int, int]:
        """`(dp_rank, sp_rank)` of a global rank."""
        return divmod(rank, self.sp_size)

    def sp_groups(self) -> list[list[int]]:
        """Ranks sharing one sequence: `dp_size` groups of `sp_size` consecutive ranks."""
        return [list(range(d * self.sp_size, (d + 1) * self.sp_size)) for d in range(self.dp_size)]

    def dp_groups(self) -> list[list[int]]:
        """Ranks holding the same sequence shard of different samples: `sp_size` groups of `dp_size`."""
        return [list(range(s, self.world_size, self.sp_size)) for s in range(self.sp_size)]


def plan_grid(world_size: int, sequence_parallel: int) -> GridLayout:
    """Validate `world = DP x SP` and return the layout.

    Raises ValueError when SP is < 1, larger than the world, or does not divide it.
    """
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")
    if sequence_parallel < 1:
        raise ValueError(f"parallel.sequence_parallel must be >= 1, got {sequence_parallel}")
    if world_size % sequence_parallel != 0:
        divisors = [d for d in range(1, world_size + 1) if world_size % d == 0]
        raise ValueError(
            f"parallel.sequence_parallel={sequence_parallel} does not divide the world size {world_size} "
            f"(torchrun --nproc_per_node x nodes); world = data_parallel x sequence_parallel, so set "
            f"sequence_parallel to one of {divisors} or change the number of processes")
    return GridLayout(world_size, sequence_parallel, world_size // sequence_parallel)


def check_attention_heads(num_heads: int, num_kv_heads: int, sp_size: int) -> int:
    """Check that Ulysses can shard the heads; return the KV-head replication factor.

    Query heads must divide evenly over the SP ranks. Key/value heads (GQA) that do not are
    replicated `r` times (each KV head repeated consecutively, which keeps the query-to-KV grouping)
    so that `num_kv_heads * r` divides `sp_size`; `r = sp / gcd(num_kv_heads, sp)`, 1 when they divide.
    """
    if num_heads % sp_size != 0:
        raise ValueError(
            f"sequence_parallel={sp_size} must divide the model's attention heads ({num_heads}): Ulysses "
            f"gives each SP rank num_heads / SP heads; choose sequence_parallel among "
            f"{[d for d in range(1, num_heads + 1) if num_heads % d == 0]}")
    if num_kv_heads < 1 or num_heads % num_kv_heads != 0:
        raise ValueError(f"num_attention_heads ({num_heads}) must be a multiple of num_key_value_heads ({num_kv_heads})")
    replicate = sp_size // math.gcd(num_kv_heads, sp_size)
    # Always integral when sp divides num_heads: num_heads/num_kv = n_rep, and sp | num_kv * n_rep.
    assert (num_heads // num_kv_heads) % replicate == 0
    return replicate


@dataclass
class ProcessGrid:
    """This rank's place in the DP x SP grid and its process groups.

    `sp_group` / `dp_group` are torch.distributed groups (created for every dimension, even of size 1,
    under torchrun); a plain single-process run without torch.distributed has both None.
    """

    rank: int
    layout: GridLayout
    sp_group: Any = None
    dp_group: Any = None
    device: str = "cpu"

    @property
    def sp_size(self) -> int:
        return self.layout.sp_size

    @property
    def dp_size(self) -> int:
        return self.layout.dp_size

    @property
    def sp_rank(self) -> int:
        return self.layout.coords(self.rank)[1]

    @property
    def dp_rank(self) -> int:
        return self.layout.coords(self.rank)[0]


def single_process_grid(device: str = "cpu") -> ProcessGrid:
    """The trivial 1 x 1 grid (no torch.distributed needed)."""
    return ProcessGrid(rank=0, layout=GridLayout(1, 1, 1), device=device)


def init_process_grid(sequence_parallel: int, backend: str | None = None) -> ProcessGrid:
    """Build the grid from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    Initialises the default process group if needed (NCCL when CUDA is available, else gloo), then
    creates every SP and DP group (all ranks call `new_group` for all groups, as torch requires).
    Without torchrun's environment and with `sequence_parallel=1` it returns the single-process grid.
    Raises ValueError (on every rank, before any collective) for impossible configurations.
    """
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() and "WORLD_SIZE" not in os.environ:
        plan_grid(1, sequence_parallel)
        return single_process_grid()
    world = dist.get_world_size() if dist.is_initialized() else int(os.environ["WORLD_SIZE"])
    layout = plan_grid(world, sequence_parallel)
    device = "cpu"
    if torch.cuda.is_available() and backend in (None, "nccl"):
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if device.startswith("cuda") else "gloo"))
    rank = dist.get_rank()
    sp_group = dp_group = None
    for ranks in layout.sp_groups():
        group = dist.new_group(ranks)
        if rank in ranks:
            sp_group = group
    for ranks in layout.dp_groups():
        group = dist.new_group(ranks)
        if rank in ranks:
            dp_group = group
    return ProcessGrid(rank=rank, layout=layout, sp_group=sp_group, dp_group=dp_group, device=device)
