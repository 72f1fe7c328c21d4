"""Every collective the trainer makes goes through here, so tensors are where the backend needs them.

NCCL takes CUDA tensors only; gloo takes CPU tensors. A tensor made without a device (`torch.tensor([x])`)
is a CPU tensor: fine under gloo, so a CPU test suite never sees the mistake, and an error under NCCL on
the first 8-GPU run. Two rules make that mistake impossible to ship:
1. call sites make their small tensors with `group_tensor(values, group)` (on `group_device(group)`), and
   every collective checks its tensors against the group's backend, naming the call and the fix;
2. no module calls `torch.distributed`'s collectives directly (tests/parallel/test_collectives.py scans
   the package and fails on one), so the check cannot be bypassed.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from lvr_trainer.parallel.timeouts import explain_timeout

# The device type each backend's collectives take; backends not listed are not checked.
BACKEND_DEVICE = {"nccl": "cuda", "gloo": "cpu"}


class CollectiveDeviceError(RuntimeError):
    """A collective got a tensor on a device its backend cannot use."""


def _backend(group) -> str:
    return str(dist.get_backend(group)).lower()


def group_device(group=None) -> torch.device:
    """The device `group`'s collectives take: the current CUDA device under NCCL, else the CPU."""
    if BACKEND_DEVICE.get(_backend(group)) == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def group_tensor(values, group=None, dtype=None) -> torch.Tensor:
    """A small tensor (flags, counts, sums) made where `group`'s collectives take it."""
    return torch.tensor(values, dtype=dtype, device=group_device(group))


def check_devices(what: str, tensors, group=None) -> None:
    """Raise when a tensor is not on the device type `group`'s backend takes (as NCCL itself would, but
    under gloo too, and with the call named)."""
    want = BACKEND_DEVICE.get(_backend(group))
    if want is None:
        return
    for t in tensors:
        if t.device.type != want:
            raise CollectiveDeviceError(
                f"{what} over a {_backend(group)} group got a tensor on {t.device}; {_backend(group)} takes "
                f"{want} tensors: create it with lvr_trainer.parallel.collectives.group_tensor(..., group) "
                f"or move it to group_device(group)")


def all_reduce(tensor: torch.Tensor, op=dist.ReduceOp.SUM, group=None) -> None:
    check_devices("all_reduce", [tensor], group)
    dist.all_reduce(tensor, op=op, group=group)


def all_gather(parts: list[torch.Tensor], tensor: torch.Tensor, group=None) -> None:
    check_devices("all_gather", [tensor, *parts], group)
    dist.all_gather(parts, tensor, group=group)


def all_to_all_single(out: torch.Tensor, tensor: torch.Tensor, group=None) -> None:
    check_devices("all_to_all_single", [out, tensor], group)
    dist.all_to_all_single(out, tensor, group=group)


def broadcast(tensor: torch.Tensor, src: int = 0, group=None) -> None:
    check_devices("broadcast", [tensor], group)
    dist.broadcast(tensor, src=src, group=group)


def broadcast_object_list(objects: list, group=None, group_src: int = 0) -> None:
    """Pickled objects: torch moves them to the right device itself."""
    dist.broadcast_object_list(objects, group=group, group_src=group_src)


def all_gather_object(out: list, obj, group=None) -> None:
    """Every rank's picklable `obj` into `out` (one slot per rank of the group, in rank order)."""
    dist.all_gather_object(out, obj, group=group)


def barrier(group=None) -> None:
    dist.barrier(group=group)


def all_reduce_sum(value: float, device, group=None) -> float:
    """`value` summed over `group`'s ranks (itself without torch.distributed); a timeout says so."""
    if not dist.is_available() or not dist.is_initialized():
        return value
    t = group_tensor([value], group, dtype=torch.float64)
    with explain_timeout("summing a metric over ranks"):
        all_reduce(t, group=group)
    return float(t.item())


def wait_for_all_ranks(what: str) -> None:
    """Wait for every rank (no-op without torch.distributed); a timeout names `what` and the setting."""
    if dist.is_available() and dist.is_initialized():
        with explain_timeout(what):
            barrier()
