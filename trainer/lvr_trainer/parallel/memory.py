"""The real sharded plan of a model on the meta device: per-rank bytes of weights, gradients, AdamW state and
reference as `parallel.fsdp` lays them out, to hold the planner's arithmetic (`lvr_trainer.plan`) to the truth.

    python -m lvr_trainer.parallel.memory [WORLD SP RANK]      # Qwen2.5-VL-7B's plan as JSON
"""

from __future__ import annotations

import json
import sys

from lvr_trainer.plan import ModelCounts


def model_counts(model) -> ModelCounts:
    """Counts of a Qwen2-VL / Qwen2.5-VL model (meta device is fine: shapes only; tied weights once)."""
    vision = {id(p): p.numel() for p in model.model.visual.parameters()}
    every = {id(p): p.numel() for p in model.parameters()}
    return ModelCounts(language=sum(n for k, n in every.items() if k not in vision), vision=sum(vision.values()))


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
