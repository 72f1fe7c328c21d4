"""torchrun worker: parallel `encode_video` on a gloo group against the single-process result.

Run by test_parallel_encode.py as `torchrun --nproc_per_node=2 encode_worker.py --out DIR`; each rank
writes rank<N>.json with the max abs difference per case.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
import torch.distributed as dist

from lvr_trainer.config import ModelConfig
from lvr_trainer.model.encode import encode_video
from lvr_trainer.model.loading import load_model
from lvr_trainer.model.processor import VideoProcessor

CASES = {"even_groups": (8, 112, 84), "odd_groups": (10, 56, 112), "one_group": (2, 56, 56)}


def embedder_case(model, proc, video: str, cache_dir: str) -> dict:
    """Both ranks miss, encode together, rank 0 stores; then both hit with no vision pass."""
    from lvr_trainer.cache.embedder import VideoEmbedder
    from lvr_trainer.cache.embedding_cache import EmbeddingCache
    from lvr_trainer.cache.local import LocalStore
    from lvr_trainer.config import FrameSampling

    sampling = FrameSampling(num_frames=6, max_pixels=112 * 112)
    parallel = VideoEmbedder(model, proc, EmbeddingCache(LocalStore(cache_dir)), sampling, dist.group.WORLD)
    first = parallel.embed(video)
    dist.barrier()
    second = parallel.embed(video)
    single = VideoEmbedder(model, proc, EmbeddingCache(None), sampling).embed(video)
    return {"hits": [first.hit, second.hit], "vision_passes": parallel.cache.stats.vision_passes,
            "max_abs_diff": float((first.embeds - single.embeds).abs().max()),
            "shape": list(first.embeds.shape), "ref_shape": list(single.embeds.shape)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--video", required=True, help="an mp4 for the cached, parallel VideoEmbedder")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model, _ = load_model(ModelConfig(preset="tiny", dtype="float32"))
    proc = VideoProcessor.from_model_config(model.config)
    result = {}
    for name, (t, h, w) in CASES.items():
        frames = np.random.default_rng(t).integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)
        pixel_values, grid = proc(frames).as_tensors()
        single = encode_video(model, pixel_values, grid)
        parallel = encode_video(model, pixel_values, grid, group=dist.group.WORLD)
        result[name] = {"shape": list(parallel.shape), "ref_shape": list(single.shape),
                        "max_abs_diff": float((parallel - single).abs().max())}
    result["embedder"] = embedder_case(model, proc, args.video, os.path.join(args.out, "cache"))
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as fh:
        json.dump(result, fh)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
