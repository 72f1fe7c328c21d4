"""Per-GPU bytes of the training state under the job's parallel layout: the arithmetic a plan is made of.

One place for the accounting: the meta-device test checks it against the real sharded plan
(`parallel.fsdp.shard_language_model` applied to Qwen2.5-VL-7B's shapes in an 8-rank world), and a memory
planner builds on the same function. Pure: parameter counts in, bytes out.

Layout (see `parallel.fsdp`): under `fsdp` the language model (decoder, embeddings, norm, LM head) is split
over every rank, SP peers included; under `ddp` every rank holds all of it. The trained weights are float32
master weights with float32 gradients and two float32 AdamW moments (bf16-mixed changes what is gathered for
compute, not what is stored). The frozen vision tower is whole on every rank, in its inference dtype. The
reference model, when `rl.kl_coef` > 0, is laid out like the policy, with no gradients and no optimizer state.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

GIB = 1024 ** 3
MASTER_BYTES = 4            # float32 master weights, gradients and each AdamW moment
ADAM_MOMENTS = 2


@dataclass(frozen=True)
class ModelCounts:
    """Parameter counts: the language model (trained; embeddings and a separate LM head included) and the
    vision tower (frozen)."""

    language: int
    vision: int


@dataclass(frozen=True)
class StateBytes:
    """Bytes per rank of the training state, by component."""

    weights: int            # trained weights (fp32) + the frozen vision tower
    gradients: int
    optimizer: int
    reference: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.reference

    def table(self) -> list[tuple[str, float]]:
        return [(name, getattr(self, name) / GIB) for name in ("weights", "gradients", "optimizer", "reference")] + [
            ("total", self.total / GIB)]


def model_counts(model) -> ModelCounts:
    """Counts of a Qwen2-VL / Qwen2.5-VL model (meta device is fine: shapes only; tied weights once)."""
    vision = {id(p): p.numel() for p in model.model.visual.parameters()}
    every = {id(p): p.numel() for p in model.parameters()}
    return ModelCounts(language=sum(n for k, n in every.items() if k not in vision), vision=sum(vision.values()))


def state_bytes(counts: ModelCounts, world: int, *, sharded: bool, vision_bytes: int = 2,
                reference: bool = True, reference_bytes: int = 2) -> StateBytes:
    """Per-rank bytes of weights, gradients, AdamW state and reference for a `world`-rank job; `sharded`: FSDP
    over every rank. `vision_bytes` / `reference_bytes`: bytes per element of the frozen tower and the
    reference model (2 for bf16)."""
    share = counts.language / world if sharded else counts.language
    vision = counts.vision * vision_bytes
    ref = int(share * reference_bytes) + vision if reference else 0
    return StateBytes(weights=int(share * MASTER_BYTES) + vision, gradients=int(share * MASTER_BYTES),
                      optimizer=int(share * MASTER_BYTES * ADAM_MOMENTS), reference=ref)


def checkpointed_activation_bytes(tokens_per_rank: int, hidden: int, intermediate: int, layers: int,
                                  act_bytes: int = 2) -> int:
    """Activations of one forward+backward with activation checkpointing per decoder layer, per rank: every
    layer's saved input (tokens x hidden), plus the one layer being recomputed (its MLP's gate, up and
    activated intermediates, and the attention block's q, k, v, output and residual). An estimate of the
    dominant terms, in the compute dtype; the attention kernel's workspace and the LM head chunks are small
    next to it."""
    saved = layers * tokens_per_rank * hidden
    one_layer = tokens_per_rank * (3 * intermediate + 5 * hidden)
    return (saved + one_layer) * act_bytes


# Qwen2.5-VL-7B-Instruct's public config.json: the shapes that matter for memory
QWEN25_VL_7B_TEXT = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                         num_key_value_heads=4, vocab_size=152064, max_position_embeddings=128000,
                         tie_word_embeddings=False,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]})
QWEN25_VL_7B_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                           window_size=112, fullatt_block_indexes=[7, 15, 23, 31], patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2)


def measure_sharded_state(text: dict, vision: dict, world: int, sp: int, rank: int = 0) -> dict:
    """Per-rank bytes of the real plan: the model built on the meta device from `text`/`vision` config
    dicts, sharded by `parallel.fsdp` as rank `rank` of a `world`-rank job (a fake process group: shapes,
    no data, no collectives), with FSDP's gradients and AdamW's moments created, and a bf16 reference
    sharded alike. Initialises torch.distributed: run it in a process of its own (`python -m
    lvr_trainer.parallel.memory`)."""
    import torch
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from .fsdp import shard_language_model
    from .grid import ProcessGrid, plan_grid

    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    grid = ProcessGrid(rank=rank, layout=plan_grid(world, sp), device="cpu")

    def build(dtype):
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False)
        with torch.device("meta"):
            model = Qwen2_5_VLForConditionalGeneration(config).to(dtype)
        model.model.visual.to(torch.bfloat16).requires_grad_(False)
        return model

    def nbytes(tensors) -> int:
        local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
        return sum(t.numel() * t.element_size() for t in local)

    policy = build(torch.float32)
    counts = model_counts(policy)
    policy = shard_language_model(policy, grid, torch.bfloat16, list(policy.model.visual.parameters()))
    trained = [p for p in policy.parameters() if p.requires_grad]
    for p in trained:
        p.grad = torch.zeros_like(p)                   # FSDP's gradients have the shards' layout
    optimizer = torch.optim.AdamW(trained, lr=1e-5)
    optimizer.step()                                   # creates the AdamW moments
    reference = build(torch.bfloat16).requires_grad_(False)
    reference = shard_language_model(reference, grid, torch.bfloat16, list(reference.model.visual.parameters()))
    return {"language": counts.language, "vision": counts.vision,
            "weights": nbytes(policy.parameters()), "gradients": nbytes(p.grad for p in trained),
            "optimizer": nbytes(v for s in optimizer.state.values() for v in s.values() if v.dim() > 0),
            "reference": nbytes(reference.parameters()),
            "sharded": all(hasattr(p, "to_local") for p in trained)}


if __name__ == "__main__":      # python -m lvr_trainer.parallel.memory [WORLD SP RANK]: the 7B plan as JSON
    world, sp, rank = (int(a) for a in (sys.argv[1:] or ["8", "4", "3"]))
    print(json.dumps(measure_sharded_state(QWEN25_VL_7B_TEXT, QWEN25_VL_7B_VISION, world, sp, rank)))
