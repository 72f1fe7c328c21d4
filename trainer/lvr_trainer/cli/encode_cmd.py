"""`lvr encode`: precompute a dataset's video embeddings into the shared cache (what LongVideoDataset runs).

Under `torchrun --nproc_per_node=W` every video is encoded by all W ranks together (each encodes its
share of the frame groups; MR-SP stage 1) and rank 0 writes the cache and prints the summary.
"""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("encode", help="precompute video embeddings of a dataset into the embedding cache")
    p.add_argument("--data", required=True, help="dataset JSONL (VideoQARecord rows)")
    p.add_argument("--cache", help="cache URI: a local directory or s3://bucket/prefix (default: the config's)")
    p.add_argument("--frames", type=int, default=None, help="frames sampled per video (default 16, or the config's)")
    p.add_argument("--max-pixels", type=int, default=None, help="pixel budget per frame (default 50176)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", help="a trainer config YAML: its model, cache and data.sampling are used")
    src.add_argument("--model", help="model directory or s3:// prefix (e.g. a Qwen2.5-VL checkout)")
    src.add_argument("--preset", default=None, help="random-init preset: tiny (default) or small")
    p.add_argument("--tokenizer", choices=["tiny", "qwen"], default="tiny", help="tokenizer of a preset")
    p.add_argument("--timeout", type=float, default=10.0, help="per-request S3 timeout, seconds (default 10)")
    p.add_argument("--on-unreachable", choices=["recompute", "fail"], default="fail",
                   help="when the cache cannot be reached: fail (default; precompute is pointless) or recompute")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_encode)


def _videos(path: str) -> tuple[list[str], int]:
    """Unique video paths or s3:// URIs of the dataset's good rows, in file order; and the bad-row count."""
    from pathlib import Path

    from lvr_trainer.data.schema import read_records

    records, bad = read_records(path)
    base = Path(path).parent
    return list(dict.fromkeys(r.video_path(base) for r in records)), len(bad)


def _settings(args):
    """(ModelConfig, cache URI, FrameSampling, timeout) from --config and the flags (flags win)."""
    from lvr_trainer.cli import CLIError
    from lvr_trainer.config import CacheConfig, ConfigError, FrameSampling, ModelConfig, load_config

    if args.config:
        try:
            cfg = load_config(args.config)
        except ConfigError as err:
            raise CLIError(str(err)) from None
        model, cache, sampling = cfg.model, cfg.cache, cfg.data.sampling
    else:
        model = ModelConfig(path=args.model) if args.model else ModelConfig(preset=args.preset or "tiny",
                                                                           tokenizer=args.tokenizer)
        cache, sampling = CacheConfig(), FrameSampling()
    overrides = {k: v for k, v in (("num_frames", args.frames), ("max_pixels", args.max_pixels)) if v is not None}
    sampling = sampling.model_copy(update=overrides) if overrides else sampling
    uri = args.cache or (cache.uri if args.config else None)
    if uri is None:
        raise CLIError("give --cache URI (a directory or s3://bucket/prefix) or --config with a cache section")
    return model, uri, FrameSampling.model_validate(sampling.model_dump()), args.timeout


def _group():
    """The WORLD group under torchrun (gloo on CPU, nccl on GPU), else None."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.group.WORLD


def _encode(args) -> int:
    import time

    from lvr_trainer.cache.embedder import VideoEmbedder
    from lvr_trainer.cache.front import EmbeddingCache
    from lvr_trainer.cache.store import StoreError, open_store
    from lvr_trainer.cli import CLIError
    from lvr_trainer.data.remote import VideoUnavailable
    from lvr_trainer.data.video import VideoError
    from lvr_trainer.model.loading import load_model
    from lvr_trainer.model.processor import VideoProcessor
    from lvr_trainer.utils.progress import Progress
    from lvr_trainer.utils.table import format_table

    try:
        videos, bad_rows = _videos(args.data)
    except OSError as err:
        raise CLIError(f"cannot read {args.data}: {err.strerror}") from None
    model_cfg, uri, sampling, timeout = _settings(args)
    try:
        store = open_store(uri, timeout_s=timeout)
    except (StoreError, ValueError) as err:
        raise CLIError(str(err)) from None
    group = _group()
    device = None
    import torch

    if torch.cuda.is_available():
        import os

        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    model, _ = load_model(model_cfg, device)
    cache = EmbeddingCache(store, on_unreachable=args.on_unreachable)
    embedder = VideoEmbedder(model, VideoProcessor.from_model_config(model.config), cache, sampling, group)
    leader = group is None or torch.distributed.get_rank(group) == 0
    bar = Progress(len(videos), "encode: videos")
    tokens, failed, start = 0, [], time.monotonic()
    for i, path in enumerate(videos, start=1):
        try:
            tokens += embedder.embed(path).num_tokens
        except VideoUnavailable as err:
            raise CLIError(str(err)) from None
        except VideoError as err:
            failed.append(str(err))
        except StoreError as err:
            raise CLIError(str(err)) from None
        if leader:
            bar.update(i, f"hits {cache.stats.hits}")
    s = cache.stats
    summary = {"videos": len(videos), "encoded": s.vision_passes, "hits": s.hits, "failed": len(failed),
               "bad_rows": bad_rows, "tokens": tokens, "bytes_written": s.bytes_written, "bytes_read": s.bytes_read,
               "hit_rate": round(s.hit_rate, 4), "corrupt": s.corrupt, "seconds": round(time.monotonic() - start, 2),
               "cache": store.uri}
    if not leader:
        return 1 if failed else 0
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{args.data}: {len(videos)} videos -> {store.uri}")
        print(format_table(["videos", "encoded", "hits", "failed", "tokens", "MiB written", "hit rate", "seconds"],
                           [[len(videos), s.vision_passes, s.hits, len(failed), tokens,
                             round(s.bytes_written / 2**20, 3), round(s.hit_rate, 3), summary["seconds"]]]))
        for msg in failed[:5]:
            print(f"  {msg}")
    return 1 if failed else 0
