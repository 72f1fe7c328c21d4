"""`lvr encode`: precompute a dataset's video embeddings into the shared cache (what LongVideoDataset runs)."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("encode", help="precompute video embeddings of a dataset into the embedding cache")
    p.add_argument("--data", required=True, help="dataset JSONL (VideoQARecord rows)")
    p.add_argument("--cache", required=True, help="cache URI: a local directory or s3://bucket/prefix")
    p.add_argument("--frames", type=int, default=16, help="frames sampled per video (default 16)")
    p.add_argument("--max-pixels", type=int, default=224 * 224, help="pixel budget per frame (default 50176)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="model directory or s3:// prefix (e.g. a Qwen2.5-VL checkout)")
    src.add_argument("--preset", default=None, help="random-init preset: tiny (default) or small")
    p.add_argument("--tokenizer", choices=["tiny", "qwen"], default="tiny", help="tokenizer of a preset")
    p.add_argument("--timeout", type=float, default=10.0, help="per-request S3 timeout, seconds (default 10)")
    p.add_argument("--on-unreachable", choices=["recompute", "fail"], default="fail",
                   help="when the cache cannot be reached: fail (default; precompute is pointless) or recompute")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_encode)


def _videos(path: str) -> tuple[list[str], int]:
    """Unique local video paths of the dataset's good rows, in file order; and the bad-row count."""
    from pathlib import Path

    from lvr_trainer.data.schema import read_records

    records, bad = read_records(path)
    base = Path(path).parent
    return list(dict.fromkeys(r.video_path(base) for r in records)), len(bad)


def _encode(args) -> int:
    import time

    from lvr_trainer.cache.embedder import VideoEmbedder
    from lvr_trainer.cache.front import EmbeddingCache
    from lvr_trainer.cache.store import StoreError, open_store
    from lvr_trainer.cli import CLIError
    from lvr_trainer.config import FrameSampling, ModelConfig
    from lvr_trainer.data.video import VideoError
    from lvr_trainer.model.loading import load_model
    from lvr_trainer.model.processor import VideoProcessor
    from lvr_trainer.utils.progress import Progress
    from lvr_trainer.utils.table import format_table

    try:
        videos, bad_rows = _videos(args.data)
    except OSError as err:
        raise CLIError(f"cannot read {args.data}: {err.strerror}") from None
    remote = [v for v in videos if v.startswith("s3://")]
    if remote:
        raise CLIError(f"{args.data}: {len(remote)} videos are s3:// URIs; sync them to local disk first "
                       f"(e.g. {remote[0]})")
    cfg = ModelConfig(path=args.model) if args.model else ModelConfig(preset=args.preset or "tiny",
                                                                     tokenizer=args.tokenizer)
    try:
        store = open_store(args.cache, timeout_s=args.timeout)
    except (StoreError, ValueError) as err:
        raise CLIError(str(err)) from None
    model, _ = load_model(cfg)
    cache = EmbeddingCache(store, on_unreachable=args.on_unreachable)
    sampling = FrameSampling(num_frames=args.frames, max_pixels=args.max_pixels)
    embedder = VideoEmbedder(model, VideoProcessor.from_model_config(model.config), cache, sampling)
    bar = Progress(len(videos), "encode: videos")
    tokens, failed, start = 0, [], time.monotonic()
    for i, path in enumerate(videos, start=1):
        try:
            tokens += embedder.embed(path).num_tokens
        except VideoError as err:
            failed.append(str(err))
        except StoreError as err:
            raise CLIError(str(err)) from None
        bar.update(i, f"hits {cache.stats.hits}")
    s = cache.stats
    summary = {"videos": len(videos), "encoded": s.vision_passes, "hits": s.hits, "failed": len(failed),
               "bad_rows": bad_rows, "tokens": tokens, "bytes_written": s.bytes_written, "bytes_read": s.bytes_read,
               "hit_rate": round(s.hit_rate, 4), "corrupt": s.corrupt, "seconds": round(time.monotonic() - start, 2),
               "cache": store.uri}
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
