"""`lvr data`: synthesise, build (`data.build`) and validate LongVideo-Reason style datasets."""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("data", help="synthesise, build or validate a long-video QA dataset (JSONL + videos)")
    ds = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    v = ds.add_parser("validate", help="check every row: schema, answer, video decodes, enough frames")
    v.add_argument("file", help="dataset JSONL: a local path or s3://bucket/key.jsonl")
    v.add_argument("--video-root", default=None, metavar="PREFIX",
                   help="resolve relative `video` paths against this directory or s3:// prefix "
                        "(default: the JSONL's directory)")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.add_argument("--max-error-rate", type=float, default=0.0,
                   help="exit 1 when the fraction of bad rows exceeds this (default 0)")
    v.add_argument("--frames", type=int, default=16, help="frames the sampler will take (default 16)")
    v.add_argument("--min-frames", type=int, default=None,
                   help="frames a video must have (default: --frames)")
    v.add_argument("--no-videos", action="store_true", help="check rows only, not the video files")
    v.add_argument("--examples", type=int, default=3, help="error examples to show per kind (default 3)")
    v.set_defaults(func=_validate)

    s = ds.add_parser("synth", help="write a synthetic long-video dataset: H.264 videos + train/val/test JSONL")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--videos", type=int, default=12, help="number of videos (default 12)")
    s.add_argument("--seconds", type=float, default=60.0, help="length of each video (default 60)")
    s.add_argument("--seed", type=int, default=0, help="seed; same seed, same bytes (default 0)")
    s.add_argument("--fps", type=int, default=8, help="frame rate (default 8)")
    s.add_argument("--size", default="224x224", help="WIDTHxHEIGHT (default 224x224)")
    s.add_argument("--events", type=int, default=8, help="events per video, 7-11 (default 8)")
    s.add_argument("--teacher-slip", type=float, default=0.0,
                   help="share of the --slip-on questions whose CoT and answer name the first option listed "
                        "(a teacher model's position bias) in train_cot.jsonl, the CoT-SFT split; "
                        "train/val/test keep the gold answers (default 0: a perfect teacher)")
    s.add_argument("--slip-on", nargs="+", default=["last_of"], metavar="QTYPE",
                   help="question types the teacher slips on: first_of, last_of (default last_of)")
    s.set_defaults(func=_synth)

    from lvr_trainer.cli.data_build_cmd import add_parser as add_build_parser

    add_build_parser(ds)


def _validate(args) -> int:
    from lvr_trainer.cli import CLIError
    from lvr_trainer.config import FrameSampling
    from lvr_trainer.data.location import DatasetUnavailable
    from lvr_trainer.data.s3_videos import VideoUnavailable
    from lvr_trainer.data.validate import ERROR_KINDS, validate_file
    from lvr_trainer.utils.table import format_table

    try:
        report = validate_file(args.file, FrameSampling(num_frames=args.frames), args.min_frames,
                               check_videos=not args.no_videos, video_root=args.video_root)
    except OSError as err:
        raise CLIError(f"cannot read {args.file}: {err.strerror}") from None
    except DatasetUnavailable as err:
        raise CLIError(str(err)) from None
    except VideoUnavailable as err:
        raise CLIError(f"{args.file}: cannot check s3:// videos: {err}") from None
    failed = report.error_rate > args.max_error_rate
    if args.json:
        print(json.dumps({**report.to_dict(args.examples), "passed": not failed}, indent=2))
        return 1 if failed else 0
    print(f"{report.path}: {report.total} rows, {report.valid} valid, {len(report.errors)} invalid "
          f"({report.error_rate:.1%}); {report.videos_checked} videos decoded")
    rows = [["valid", report.valid, "-"]]
    rows += [[kind, n, ERROR_KINDS[kind]] for kind, n in report.counts().items()]
    print(format_table(["rows", "count", "meaning"], rows))
    if report.categories:
        cats = sorted(report.categories.items())
        print(format_table(["category", "questions"], cats))
    if report.remote_unchecked:
        print(f"{report.remote_unchecked} rows point at s3:// videos, not checked: {report.remote_reason}")
    for kind, errors in report.examples(args.examples).items():
        print(f"{kind}:")
        for e in errors:
            print(f"  line {e.line}{' (' + e.id + ')' if e.id else ''}: {e.message}")
    if failed:
        print(f"FAILED: error rate {report.error_rate:.1%} is above --max-error-rate {args.max_error_rate:.1%}",
              file=sys.stderr)
        return 1
    return 0


def _synth(args) -> int:
    from lvr_trainer.cli import CLIError
    from lvr_trainer.data.synth import SynthSpec, synthesise
    from lvr_trainer.utils.progress import Progress
    from lvr_trainer.utils.table import format_table

    try:
        width, height = (int(x) for x in args.size.lower().split("x"))
    except ValueError:
        raise CLIError(f"--size must look like 224x224, got {args.size!r}") from None
    spec = SynthSpec(videos=args.videos, seconds=args.seconds, fps=args.fps, width=width, height=height,
                     events=args.events, seed=args.seed, teacher_slip=args.teacher_slip,
                     slip_on=tuple(args.slip_on))
    try:
        spec.check()
    except ValueError as err:
        raise CLIError(str(err)) from None
    bar = Progress(spec.videos, "synth: videos")
    m = synthesise(args.out, spec, progress=lambda done, total: bar.update(done))
    print(f"wrote {args.out}: {spec.videos} videos of {spec.seconds:g}s at {spec.fps} fps, {width}x{height}")
    rows = [[s, m["videos"][s], m["questions"][s]] for s in ("train", "val", "test")]
    print(format_table(["split", "videos", "questions"], rows))
    letters = m["answer_letters"]
    print(format_table(["category", "A", "B", "C", "D"],
                       [[c, *(n[k] for k in "ABCD")] for c, n in letters.items()]))
    return 0
