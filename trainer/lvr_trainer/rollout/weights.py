"""The policy's weights as the rollout engine receives them: which tensors, in which dtype, in which buckets.

Names are the transformers state-dict names (FSDP2 keeps them). Tied parameters appear under each of
their names (`lm_head.weight` and the input embeddings): vLLM keeps its own copy of a tied LM head once
it has laid the weights out for its kernels, and would otherwise keep sampling from the old head.
Only the language model travels: the rollout engine is fed cached video embeddings and never runs the
vision tower, which the trainer keeps frozen (a trained tower would invalidate the embedding cache).
Sharded (DTensor) parameters are gathered, which is a collective: every rank must iterate, in the same
order; a rank that does not send drops each gathered tensor at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from lvr_trainer.rollout.base import NamedTensors


@dataclass(frozen=True)
class WeightEntry:
    """One tensor of a weight transfer: its name, shape and dtype name (e.g. "bfloat16")."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * getattr(torch, self.dtype).itemsize


def _is_vision(name: str) -> bool:
    return name.startswith(("visual.", "model.visual."))


def synced_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of every language-model parameter, tied names included, in module order."""
    return [(n, p) for n, p in model.named_parameters(remove_duplicate=False) if not _is_vision(n)]


def plan_transfer(model: torch.nn.Module, dtype: torch.dtype | None, bucket_bytes: int) -> list[list[WeightEntry]]:
    """The buckets of one sync: consecutive entries, each bucket at most `bucket_bytes` (a larger tensor
    travels alone). From shapes only: no gather, the same on every rank."""
    buckets: list[list[WeightEntry]] = [[]]
    size = 0
    for name, p in synced_parameters(model):
        entry = WeightEntry(name, tuple(p.shape), str(dtype or p.dtype).removeprefix("torch."))
        if buckets[-1] and size + entry.nbytes > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(entry)
        size += entry.nbytes
    return [b for b in buckets if b]


def gather_bucket(model: torch.nn.Module, bucket: list[WeightEntry], keep: bool) -> dict[str, torch.Tensor]:
    """The bucket's tensors whole, on the CPU, in the bucket's dtype, on the rank that `keep`s them; every rank
    takes part in each gather (FSDP: an all-gather per tensor) and the others keep nothing. A tensor tied
    under two names is gathered once and copied for its second name (safetensors refuses shared storage)."""
    from torch.distributed.tensor import DTensor

    params = dict(model.named_parameters(remove_duplicate=False))
    out: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    for entry in bucket:
        p = params[entry.name]
        if id(p) in seen:        # gathered once on every rank (a second gather would unpair the collectives)
            if keep:
                out[entry.name] = out[seen[id(p)]].clone()
            continue
        seen[id(p)] = entry.name
        t = p.detach()
        if isinstance(t, DTensor):
            t = t.full_tensor()
        if keep:
            out[entry.name] = t.to(device="cpu", dtype=getattr(torch, entry.dtype)).contiguous()
        del t
    return out


def policy_tensors(model: torch.nn.Module, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Each synced parameter whole, on the CPU (cast to `dtype` when given), one at a time."""
    for bucket in plan_transfer(model, dtype, bucket_bytes=0):
        yield from gather_bucket(model, bucket, keep=True).items()


def parameter_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """{name: shape} of what an engine serving `model` accepts (tied names included)."""
    return {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)}


def check_entries(entries, shapes: dict[str, tuple[int, ...]], what: str) -> None:
    """Every (name, shape) must be a parameter of the served model with that shape: checked before any
    byte is loaded, so a bad set (another architecture) is an error naming the weight and changes nothing."""
    for name, shape in entries:
        if name not in shapes:
            raise KeyError(f"weight {name!r} is not a parameter of the served model ({what}); was it saved "
                           "from another architecture?")
        if tuple(shapes[name]) != tuple(shape):
            raise ValueError(f"weight {name!r}: shape {tuple(shape)} != the model's {tuple(shapes[name])}")


def load_into(model: torch.nn.Module, named_tensors: NamedTensors, checked: bool = False) -> int:
    """Copy tensors into `model`'s parameters in place (no re-allocation: the engine's references stay
    valid); returns the count. Unless the caller `checked` the names and shapes already, the tensors are
    listed and checked first, so a bad set changes nothing."""
    params = dict(model.named_parameters(remove_duplicate=False))
    if not checked:
        named_tensors = list(named_tensors)
        check_entries(((n, t.shape) for n, t in named_tensors), parameter_shapes(model), type(model).__name__)
    count = 0
    with torch.no_grad():
        for name, t in named_tensors:
            params[name].copy_(t)
            count += 1
    return count


def unshared_cpu(named_tensors: NamedTensors) -> dict[str, torch.Tensor]:
    """{name: contiguous CPU tensor}, tied tensors (one storage, two names) as copies: the form
    safetensors writes (it refuses shared storage), for a POST body or a file on a shared volume."""
    out, seen = {}, set()
    for name, t in named_tensors:
        t = t.detach().cpu().contiguous()
        if t.untyped_storage().data_ptr() in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out
