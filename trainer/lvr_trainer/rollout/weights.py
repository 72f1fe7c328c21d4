"""The policy's weights as (name, tensor) pairs for an engine that holds its own copy (vLLM, a server).

Names are the transformers state-dict names (FSDP2 keeps them). Tied parameters appear under each of
their names (`lm_head.weight` and the input embeddings): vLLM keeps its own copy of a tied LM head once
it has laid the weights out for its kernels, and would otherwise keep sampling from the old head.
Sharded (DTensor) parameters are gathered, which is a collective: every rank must iterate, in the same
order.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from lvr_trainer.rollout.base import NamedTensors


def policy_tensors(model: torch.nn.Module, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Each parameter whole, on the CPU (cast to `dtype` when given: bf16 halves what travels)."""
    from torch.distributed.tensor import DTensor

    for name, p in model.named_parameters(remove_duplicate=False):
        t = p.detach()
        if isinstance(t, DTensor):
            t = t.full_tensor()
        yield name, (t.to(dtype) if dtype is not None else t).cpu()


def load_into(model: torch.nn.Module, named_tensors: NamedTensors) -> int:
    """Copy tensors into `model`'s parameters in place (no re-allocation: the engine's references stay
    valid); returns the count. Every name and shape is checked before anything is copied, so a bad
    set (another architecture) is an error naming the weight and leaves the model as it was."""
    params = dict(model.named_parameters(remove_duplicate=False))
    pairs = list(named_tensors)
    for name, t in pairs:
        if name not in params:
            raise KeyError(f"weight {name!r} is not a parameter of the served model "
                           f"({type(model).__name__}); was it saved from another architecture?")
        if params[name].shape != t.shape:
            raise ValueError(f"weight {name!r}: shape {tuple(t.shape)} != the model's {tuple(params[name].shape)}")
    with torch.no_grad():
        for name, t in pairs:
            params[name].copy_(t)
    return len(pairs)


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
