"""Benchmark: video embeddings needed G+2 times per prompt (G rollouts + policy + reference prefill).

Three ways to get them, per preset and frame count:
  re-encode  patchify + vision tower every time (G+2 vision passes)
  local      one vision pass, stored in a LocalStore, then G+1 reads (checksum verified)
  s3         the same through an S3Store on a local S3 server (moto_server, loopback)
Prints one table (seconds per prompt, speed-up over re-encode) for BENCHMARKS.md.

    .venv/bin/python bench/cache.py [--presets tiny small] [--frames 64 256 1024] [--group 8]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
import uuid

import numpy as np
import torch

from lvr_trainer.cache.embedding_cache import EmbeddingCache
from lvr_trainer.cache.local import LocalStore
from lvr_trainer.cache.payload import CachedVideo
from lvr_trainer.storage.s3 import S3Store
from lvr_trainer.config import ModelConfig
from lvr_trainer.model.encode import encode_video
from lvr_trainer.model.loading import load_model
from lvr_trainer.model.processor import VideoProcessor
from lvr_trainer.utils.table import format_table


def encoder(model, frames: np.ndarray):
    """A closure doing one full encode: patchify + vision tower -> CachedVideo."""
    proc = VideoProcessor.from_model_config(model.config)

    def run() -> CachedVideo:
        pixel_values, grid = proc(frames).as_tensors()
        return CachedVideo(encode_video(model, pixel_values, grid), grid)

    return run


def uses_per_prompt(cache: EmbeddingCache | None, encode, uses: int) -> float:
    """Seconds to obtain the embeddings `uses` times, through `cache` (None: re-encode each time)."""
    key = uuid.uuid4().hex + uuid.uuid4().hex  # fresh key: the first use is a miss
    start = time.perf_counter()
    for _ in range(uses):
        if cache is None:
            encode()
        else:
            cache.get_or_encode(key, encode)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--frames", nargs="+", type=int, default=[64, 256, 1024])
    parser.add_argument("--size", type=int, default=112, help="frame height and width (multiple of 28)")
    parser.add_argument("--group", type=int, default=8, help="G, rollouts per prompt (default 8)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    uses = args.group + 2

    from lvr_localcluster.s3 import S3Server

    rows = []
    with tempfile.TemporaryDirectory() as tmp, S3Server(log_dir=tmp) as s3:
        s3_store = S3Store(s3.url, s3.bucket, "bench", s3.access_key, s3.secret_key, timeout_s=30)
        for preset in args.presets:
            model, _ = load_model(ModelConfig(preset=preset))
            for n in args.frames:
                frames = np.random.default_rng(n).integers(0, 256, (n, args.size, args.size, 3), dtype=np.uint8)
                encode = encoder(model, frames)
                with torch.no_grad():
                    tokens = encode().num_tokens  # warm-up, and the size of one entry
                    t_re = uses_per_prompt(None, encode, uses)
                    local = EmbeddingCache(LocalStore(f"{tmp}/local-{preset}-{n}"))
                    t_local = uses_per_prompt(local, encode, uses)
                    remote = EmbeddingCache(s3_store)
                    t_s3 = uses_per_prompt(remote, encode, uses)
                assert local.stats.vision_passes == remote.stats.vision_passes == 1
                rows.append([preset, n, tokens, round(local.stats.bytes_written / 2**20, 2), uses,
                             round(t_re, 3), round(t_local, 3), round(t_s3, 3),
                             round(t_re / t_local, 1), round(t_re / t_s3, 1)])
                print(f"  {preset} {n} frames: re-encode {t_re:.3f}s, local {t_local:.3f}s, s3 {t_s3:.3f}s",
                      flush=True)
    print(f"\nmachine: {platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}; "
          f"frames {args.size}x{args.size}; G={args.group} -> {uses} uses per prompt")
    print(format_table(["preset", "frames", "video tokens", "entry MiB", "uses", "re-encode s", "local s", "s3 s",
                        "local x", "s3 x"], rows))


if __name__ == "__main__":
    main()
