"""FSDP2 over every rank of the job, sequence-parallel peers included: one mesh for data and sequence parallelism.

Each rank holds 1/world of the language model (decoder layers, embeddings, final norm, LM head), of its
gradients and of its AdamW state, the way torchtitan shards over data-parallel x context-parallel ranks; the
Ulysses all-to-alls run inside each SP group of consecutive ranks (`parallel.grid`). Hybrid sharding (`hsdp`)
shards within each node and replicates across nodes, so that the all-gathers stay on a node's fast links. The
frozen vision tower stays whole on every rank: no gradients, no optimizer state, and it runs once per video.

Gradients mean what `sp_forward.reduce_gradients` makes them mean: the SP ranks of a group each hold the part
that flowed through their shard of the sequence (summed), the DP ranks hold gradients of different samples
(averaged). FSDP's reduce-scatter sums over every rank, so it divides by the DP size, not the world size.

The loops call the language model's parts directly (`embed_inputs`, the decoder, the LM head's weight in
`token_logprobs`), never the wrapper's forward, so the root unit (embeddings, norm, head; a tied head shares
its unit) is gathered around each use by `gathered_root`. Under autograd it stays gathered until the backward
is done: FSDP's post-backward callback reduce-scatters its gradients and frees it, as for any unit.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from .grid import ProcessGrid


def fsdp_mesh(grid: ProcessGrid, per_node: int | None = None):
    """The device mesh FSDP's all-gathers and reduce-scatters run on: 1-D over every rank, or with `per_node`
    (hybrid) 2-D, nodes x ranks of a node: sharded along the second dimension, replicated along the first."""
    from torch.distributed.device_mesh import init_device_mesh

    device, world = grid.device.split(":")[0], grid.layout.world_size
    if per_node is None:
        return init_device_mesh(device, (world,))
    if per_node < 1 or world % per_node:
        raise ValueError(f"hybrid sharding needs the same number of ranks on every node: {world} ranks do not "
                         f"split into nodes of {per_node}")
    return init_device_mesh(device, (world // per_node, per_node), mesh_dim_names=("replicate", "shard"))


def shard_language_model(model: torch.nn.Module, grid: ProcessGrid, param_dtype: torch.dtype | None = None,
                         frozen: list[torch.nn.Parameter] | None = None, per_node: int | None = None,
                         offload: bool = False) -> torch.nn.Module:
    """Shard `model`'s language model over every rank (each decoder layer a unit, the rest the root unit), or
    with `per_node` over each node's ranks, replicated across nodes; `frozen` parameters (the vision tower) stay
    whole. `param_dtype`: the dtype gathered for compute (bf16 under bf16-mixed), gradients reduced in float32.
    `offload`: the shards live in host memory between uses (a frozen reference model; on a CPU-only job they
    are there anyway). Idempotent."""
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    if isinstance(model, FSDPModule):
        return model
    mesh = fsdp_mesh(grid, per_node)
    placement = CPUOffloadPolicy() if offload and grid.device.startswith("cuda") else OffloadPolicy()
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    units = []
    for layer in model.model.language_model.layers:
        units.append(fully_shard(layer, mesh=mesh, mp_policy=mp, offload_policy=placement))
    root = fully_shard(model, mesh=mesh, mp_policy=mp, offload_policy=placement, ignored_params=set(frozen or ()),
                       reshard_after_forward=True)
    for unit in (*units, root):
        unit.set_gradient_divide_factor(float(grid.dp_size))
        unit.set_force_sum_reduction_for_comms(True)     # a divide factor other than the mesh size needs SUM
    return root


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def gathered_root(model: torch.nn.Module) -> Iterator[None]:
    """The root unit's parameters whole for the body (a no-op for an unsharded model). Without autograd they
    are freed on exit; with it, FSDP's post-backward reduce-scatters their gradients and frees them."""
    if not is_sharded(model):
        yield
        return
    # The root is initialised by its first forward; here the layers run without it, and the first of them to
    # run would make itself a root. torch exposes the initialisation only on the private state (idempotent).
    model._get_fsdp_state()._lazy_init()
    model.unshard()
    grad = torch.is_grad_enabled()
    try:
        yield
    finally:
        if not grad:
            model.reshard()
