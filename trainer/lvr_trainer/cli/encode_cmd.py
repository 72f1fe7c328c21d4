"""`lvr encode`: precompute a dataset's video embeddings into the shared cache (what LongVideoDataset runs).

Under `torchrun --nproc_per_node=W` every video is encoded by all W ranks together (each encodes its
share of the frame groups; MR-SP stage 1) and rank 0 writes the cache and prints the summary. A video
that fails to decode is skipped, counted and listed; the command fails only when the share of such
videos exceeds `--max-error-rate` (an unreachable cache or S3 endpoint always fails it).
"""

from __future__ import annotations

import json

# The --json summary is the prep pod's termination message (Kubernetes keeps at most 4096 bytes).
SUMMARY_BYTES = 3072
LISTED_FAILURES = 10      # failed videos named in the summary, in the order they failed
VIDEO_CHARS = 96          # a longer path or URI keeps its start and its end (the file name)
REASON_CHARS = 100        # a longer reason keeps its start


def register(sub) -> None:
    p = sub.add_parser("encode", help="precompute video embeddings of a dataset into the embedding cache")
    p.add_argument("--data", required=True, help="dataset JSONL (VideoQARecord rows): a path or s3://bucket/key.jsonl")
    p.add_argument("--video-root", default=None, metavar="PREFIX",
                   help="resolve relative `video` paths against this directory or s3:// prefix "
                        "(default: the JSONL's directory)")
    p.add_argument("--max-error-rate", type=float, default=0.0, metavar="R",
                   help="skip videos that fail to decode; exit 1 when their share of the videos exceeds R "
                        "(0-1, default 0: any failure fails the command)")
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


def _videos(data: str, video_root: str | None, timeout_s: float) -> tuple[list[str], int]:
    """Unique video paths or s3:// URIs of the dataset's good rows, in file order; and the bad-row count."""
    from lvr_trainer.data.location import open_dataset
    from lvr_trainer.data.schema import read_records

    dataset = open_dataset(data, video_root, timeout_s)
    records, bad = read_records(dataset.local)
    return list(dict.fromkeys(dataset.video(r) for r in records)), len(bad)


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
    if args.max_pixels is not None:     # a small budget lowers the floor too (as `lvr eval` and the operator do)
        overrides["min_pixels"] = min(sampling.min_pixels, args.max_pixels)
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


def _embedder(args):
    """(VideoEmbedder, store, whether this process prints) for the flags; loads the model."""
    import os

    import torch

    from lvr_trainer.cache.embedder import VideoEmbedder
    from lvr_trainer.cache.embedding_cache import EmbeddingCache
    from lvr_trainer.cache.store import open_store
    from lvr_trainer.storage.errors import StoreError
    from lvr_trainer.cli import CLIError
    from lvr_trainer.model.loading import load_model
    from lvr_trainer.model.processor import VideoProcessor

    model_cfg, uri, sampling, timeout = _settings(args)
    try:
        store = open_store(uri, timeout_s=timeout)
    except (StoreError, ValueError) as err:
        raise CLIError(str(err)) from None
    group = _group()
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else None
    model, _ = load_model(model_cfg, device)
    cache = EmbeddingCache(store, on_unreachable=args.on_unreachable)
    embedder = VideoEmbedder(model, VideoProcessor.from_model_config(model.config), cache, sampling, group)
    return embedder, store, group is None or torch.distributed.get_rank(group) == 0


def _embed_all(embedder, videos: list[str], leader: bool) -> tuple[int, list[tuple[str, str]]]:
    """(video tokens, [(video, reason)] of the videos that failed to decode). An unreachable cache or S3
    endpoint stops the command (CLIError): it is no fault of the dataset."""
    from lvr_trainer.storage.errors import StoreError
    from lvr_trainer.cli import CLIError
    from lvr_trainer.data.s3_videos import VideoUnavailable
    from lvr_trainer.data.video import VideoError
    from lvr_trainer.utils.progress import Progress

    bar = Progress(len(videos), "encode: videos")
    tokens, failed = 0, []
    for i, path in enumerate(videos, start=1):
        try:
            tokens += embedder.embed(path).num_tokens
        except VideoUnavailable as err:
            raise CLIError(str(err)) from None
        except VideoError as err:
            failed.append((path, f"{err.kind}: {err.detail}"))
        except StoreError as err:
            raise CLIError(str(err)) from None
        if leader:
            bar.update(i, f"hits {embedder.cache.stats.hits} failed {len(failed)}")
    return tokens, failed


def clip(text: str, limit: int, keep_end: bool = False) -> str:
    """`text` cut to `limit` characters with `...` at the cut: at the end, or (`keep_end`) in the
    middle, keeping a third of the start and the rest of the end."""
    if len(text) <= limit:
        return text
    if not keep_end:
        return text[:limit - 3] + "..."
    head = (limit - 3) // 3
    return text[:head] + "..." + text[len(text) - (limit - 3 - head):]


def failed_listing(failed: list[tuple[str, str]]) -> list[dict[str, str]]:
    """The first LISTED_FAILURES failures as `{"video", "error"}`, both clipped."""
    return [{"video": clip(video, VIDEO_CHARS, keep_end=True), "error": clip(reason, REASON_CHARS)}
            for video, reason in failed[:LISTED_FAILURES]]


def fit_summary(summary: dict, limit: int = SUMMARY_BYTES) -> dict:
    """`summary` with `failed_videos` shortened from the end until its printed JSON fits in `limit` bytes."""
    listed = list(summary["failed_videos"])
    while listed and len(json.dumps({**summary, "failed_videos": listed}, indent=2).encode()) > limit:
        listed.pop()
    return {**summary, "failed_videos": listed}


def _print_text(args, summary: dict, failed: list[tuple[str, str]]) -> None:
    from lvr_trainer.utils.table import format_table

    print(f"{args.data}: {summary['videos']} videos -> {summary['cache']}")
    print(format_table(["videos", "encoded", "hits", "failed", "tokens", "MiB written", "hit rate", "seconds"],
                       [[summary[k] for k in ("videos", "encoded", "hits", "failed", "tokens")]
                        + [round(summary["bytes_written"] / 2**20, 3), round(summary["hit_rate"], 3),
                           summary["seconds"]]]))
    for entry in failed_listing(failed):
        print(f"  skipped {entry['video']}: {entry['error']}")
    if len(failed) > LISTED_FAILURES:
        print(f"  ... and {len(failed) - LISTED_FAILURES} more")


def _encode(args) -> int:
    import sys
    import time

    from lvr_trainer.cli import CLIError
    from lvr_trainer.data.location import DatasetUnavailable

    if not 0.0 <= args.max_error_rate <= 1.0:
        raise CLIError(f"--max-error-rate must be between 0 and 1 (a fraction of the videos), got "
                       f"{args.max_error_rate:g}")
    try:
        videos, bad_rows = _videos(args.data, args.video_root, args.timeout)
    except OSError as err:
        raise CLIError(f"cannot read {args.data}: {err.strerror}") from None
    except DatasetUnavailable as err:
        raise CLIError(str(err)) from None
    embedder, store, leader = _embedder(args)
    start = time.monotonic()
    tokens, failed = _embed_all(embedder, videos, leader)
    s = embedder.cache.stats
    rate = len(failed) / len(videos) if videos else 0.0
    too_many = rate > args.max_error_rate
    if not leader:
        return 1 if too_many else 0
    summary = fit_summary({
        "videos": len(videos), "encoded": s.vision_passes, "hits": s.hits, "failed": len(failed),
        "failed_videos": failed_listing(failed), "max_error_rate": args.max_error_rate, "bad_rows": bad_rows,
        "tokens": tokens, "bytes_written": s.bytes_written, "bytes_read": s.bytes_read,
        "hit_rate": round(s.hit_rate, 4), "corrupt": s.corrupt, "seconds": round(time.monotonic() - start, 2),
        "cache": store.uri})
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_text(args, summary, failed)
    if too_many:
        print(f"FAILED: {len(failed)} of {len(videos)} videos could not be encoded (missing or not decodable: "
              f"{rate:.1%}), above --max-error-rate {args.max_error_rate:g}; fix or drop those rows, or raise "
              "--max-error-rate (a LongVideoDataset's spec.maxErrorRate)", file=sys.stderr)
    return 1 if too_many else 0
