"""Sharded checkpoints under FSDP: every rank writes its own shards of the master weights and optimizer state
with torch.distributed.checkpoint (DCP), in the background while training goes on; the model for users and
for the SFT -> RL hand-off is exported as Hugging Face safetensors in the training dtype, one tensor gathered
at a time, so no host ever holds the whole model.

Layout under `<output>/checkpoints/step-000123/` (`lvr_trainer.layout`):
    model/              the export: config, safetensors (sharded files + index past `EXPORT_SHARD_BYTES`),
                        tokenizer, processor settings; `from_pretrained` loads it
    state/              DCP: float32 master weights and AdamW moments, a file per rank and `.metadata`
    trainer_state.pt    schedule, RNG, step (rank 0, small)
`latest` moves to a checkpoint only after every rank's shards are on disk (DCP's coordinator collects every
rank's write before the save counts as done), so a crash mid-save leaves the previous one as latest. Resume
loads `state/` into whatever layout the new job has: DCP reshards (4 ranks saved, 2 load).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from lvr_trainer.train.checkpoint import save_processing_files

EXPORT_SHARD_BYTES = 2 * 1024 ** 3
_SAVE_GROUP: Any = None


def _save_group():
    """A process group of its own for the background saves: their collectives must never interleave with
    the training step's on the same group. Created once, by every rank together (the first save)."""
    global _SAVE_GROUP
    world = dist.group.WORLD
    if _SAVE_GROUP is None or _SAVE_GROUP[0] is not world:      # none yet, or made for a destroyed world
        _SAVE_GROUP = (world, dist.new_group(backend="gloo"))
    return _SAVE_GROUP[1]


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def export_model_dir(model, tokenizer, processor, path: Path, dtype: torch.dtype, write: bool) -> int:
    """Write `model` as a Hugging Face directory at `path` in `dtype`, one tensor gathered at a time (a
    collective: every rank calls it; only the rank with `write` keeps and writes, at most one safetensors
    file's worth, `EXPORT_SHARD_BYTES`, beyond its own shards). Returns the bytes written (0 elsewhere)."""
    from safetensors.torch import save_file

    current: dict[str, torch.Tensor] = {}
    current_bytes, total, numbered, weight_map = 0, 0, 0, {}

    def write_file(name: str) -> None:
        save_file(current, str(path / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(current, name))
        current.clear()

    if write:
        path.mkdir(parents=True, exist_ok=True)
    for name, tensor in _export_tensors(model):
        full = _full(tensor.detach())                         # collective for a sharded tensor
        if not write:
            continue
        value = full.to("cpu", dtype if full.is_floating_point() else full.dtype).contiguous()
        (name, value), = _hub_names(model, {name: value}).items()
        current[name] = value
        current_bytes += value.numel() * value.element_size()
        total += value.numel() * value.element_size()
        if current_bytes >= EXPORT_SHARD_BYTES:
            numbered += 1
            write_file(f"model-{numbered:05d}.safetensors")
            current_bytes = 0
    if not write:
        return 0
    if numbered == 0:
        write_file("model.safetensors")
    else:                   # several files, numbered as they filled up, and an index naming each tensor's
        if current:
            write_file(f"model-{numbered + 1:05d}.safetensors")
        (path / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    config = model.config
    config.dtype = dtype                                       # what the files hold
    config.save_pretrained(str(path))
    save_processing_files(tokenizer, processor, path)
    return total


def _export_tensors(model):
    """(name, tensor) of what a model directory holds, in the same order on every rank: each parameter once (a
    tied LM head is the embedding, as `save_pretrained` writes it), then the persistent buffers."""
    params = list(model.named_parameters())                 # tied parameters once, by identity
    every = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    state = model.state_dict()
    return params + [(name, t) for name, t in state.items() if name not in every]


def _hub_names(model, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The names `save_pretrained` writes (transformers renames some modules between its classes and the
    published checkpoints; vLLM and other readers expect the published ones)."""
    from transformers.core_model_loading import revert_weight_conversion

    renamed = revert_weight_conversion(model, tensors)
    return renamed if len(renamed) == len(tensors) else tensors


@dataclass
class PendingSave:
    """A sharded save started in the background: `future` resolves when every rank's shards are written."""

    step: int
    directory: Path
    future: Any

    def wait(self) -> None:
        self.future.result()


def save_sharded(directory: Path, step: int, model, optimizer) -> PendingSave:
    """Start writing this rank's shards of the model and optimizer state under `directory` (DCP, async);
    training may go on at once. Every rank calls it together."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    future = dcp.async_save({"model": model_state, "optim": optim_state}, checkpoint_id=str(directory),
                            process_group=_save_group())
    return PendingSave(step=step, directory=directory, future=future)


def load_sharded(directory: Path, model, optimizer) -> None:
    """Load the model and optimizer state saved by `save_sharded` into this job's layout (any number of
    ranks: DCP reads the pieces each rank's shards need). Every rank calls it together."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(directory))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
