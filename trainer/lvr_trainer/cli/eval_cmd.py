"""`lvr eval`: multiple-choice accuracy of a model on a LongVideo-Reason style split."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("eval", help="score a model on a split: accuracy per category and duration, strict and lenient")
    p.add_argument("--model", required=True,
                   help="model directory (a checkpoint's model/ or a HF checkout), or preset:NAME for random init")
    p.add_argument("--data", required=True, help="JSONL split to evaluate")
    p.add_argument("--frames", type=int, nargs="+", default=[16], help="frame counts to evaluate (default 16)")
    p.add_argument("--max-pixels", type=int, default=None, help="pixel budget per frame (default: config's)")
    p.add_argument("--think", action=__import__("argparse").BooleanOptionalAction, default=True,
                   help="ask for reasoning before the answer (default: --think)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=None, help="only the first N records")
    p.add_argument("--cache", default=None, help="embedding cache URI (default: ~/.cache/lvr/embeddings)")
    p.add_argument("--out", default=None, help="directory for results.json, results.md, replies.jsonl")
    p.add_argument("--plot", default=None, help="PNG of accuracy vs. frames (with several --frames)")
    p.add_argument("--samples", type=int, default=0,
                   help="also sample K replies per question and report GRPO's headroom: sampled accuracy, "
                        "pass@K, majority@K, greedy errors some sample fixes (default 0: greedy only)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature for --samples")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from pathlib import Path

    import torch

    from lvr_trainer.cli import CLIError
    from lvr_trainer.config import CacheConfig, EvalConfig, FrameSampling, ModelConfig
    from lvr_trainer.eval.headroom import headroom_by_category, headroom_table, write_headroom
    from lvr_trainer.eval.run import (evaluate, plot_accuracy_vs_frames, sample_questions, sampling_with_frames,
                                      write_results)
    from lvr_trainer.eval.scoring import results_table
    from lvr_trainer.data.split import DataError, load_split
    from lvr_trainer.model.loading import load_policy
    from lvr_trainer.inputs.features import VideoFeatureSource

    if args.samples < 0 or (args.samples and args.temperature <= 0):
        raise CLIError("--samples K needs K >= 1 and --temperature > 0 (greedy is always scored)")
    if args.model.startswith("preset:"):
        mcfg = ModelConfig(preset=args.model.split(":", 1)[1], tokenizer="tiny")
    elif Path(args.model).is_dir() or args.model.startswith("s3://"):
        mcfg = ModelConfig(path=args.model)
    else:
        raise CLIError(f"--model {args.model}: not a directory; give a model directory or preset:NAME")
    try:
        records, base_dir = load_split(args.data, 1.0)
    except DataError as err:
        raise CLIError(str(err)) from None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, processor = load_policy(mcfg, device)
    ecfg = EvalConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, limit=args.limit,
                      think=args.think)
    base = FrameSampling() if args.max_pixels is None else FrameSampling(max_pixels=args.max_pixels,
                                                                         min_pixels=min(3136, args.max_pixels))
    from lvr_trainer.cache.embedding_cache import EmbeddingCache

    cache = EmbeddingCache.from_config(CacheConfig(uri=args.cache) if args.cache else CacheConfig())
    results, headrooms = {}, {}
    for frames in args.frames:
        source = VideoFeatureSource(model, processor, sampling_with_frames(base, frames), base_dir, cache)
        results[frames] = evaluate(model, tokenizer, records, source, ecfg)
        print(f"## {args.model} on {args.data}, {frames} frames\n")
        print(results_table(results[frames].summary) + "\n")
        if args.samples:
            questions = sample_questions(model, tokenizer, results[frames], records, source, ecfg, args.samples,
                                         args.temperature)
            headrooms[frames] = headroom_by_category(questions)
            print(f"GRPO headroom: {args.samples} samples per question at temperature {args.temperature:g}\n")
            print(headroom_table(headrooms[frames], args.samples, args.temperature) + "\n")
    if args.out:
        write_results(args.out, results, args.model, args.data)
        if headrooms:
            write_headroom(args.out, headrooms, args.samples, args.temperature)
        print(f"results in {args.out}/results.json and results.md")
    if args.plot:
        plot_accuracy_vs_frames(results, args.plot)
        print(f"plot: {args.plot}")
    return 0
