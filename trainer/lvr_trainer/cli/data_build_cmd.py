"""`lvr data build`: arguments, credentials and the run, top to bottom. Heavy imports stay inside `run`.

The API key comes from an environment variable (`--api-key-env`) or a file (`--api-key-file`, e.g. a
mounted Kubernetes Secret), never from the command line, where `ps` and shell history would show it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

DEFAULT_CONCURRENCY = 8
BUILD_CACHE_ENV = "LVR_BUILD_CACHE_DIR"
DEFAULT_BUILD_CACHE = "~/.cache/lvr/build"


def add_parser(sub) -> None:
    """Register `build` on the `lvr data` subparsers."""
    b = sub.add_parser("build", help="build a LongVideo-Reason dataset from your videos with a VLM captioner "
                                     "and an LLM reasoner (OpenAI-compatible endpoints)")
    b.add_argument("--videos", required=True, metavar="DIR|s3://PREFIX", help="folder or s3:// prefix of videos")
    b.add_argument("--out", required=True, metavar="DIR|s3://PREFIX", help="where the dataset goes")
    for role, kind in (("captioner", "VLM"), ("reasoner", "LLM")):
        b.add_argument(f"--{role}", required=True, metavar="URL",
                       help=f"base URL of the {kind}'s OpenAI-compatible server, e.g. http://{role}:8000/v1")
        b.add_argument(f"--{role}-model", default=None, metavar="NAME",
                       help="model name (default: the first that GET /models lists)")
    key = b.add_mutually_exclusive_group()
    key.add_argument("--api-key-env", metavar="NAME", help="environment variable holding the API key (both endpoints)")
    key.add_argument("--api-key-file", metavar="PATH", help="file holding the API key (e.g. a mounted Secret)")
    _add_knobs(b)
    b.add_argument("--json", action="store_true", help="print a compact JSON report on stdout (the summary "
                   "tables go to stderr): what a LongVideoDataset's preparation pod reports")
    b.add_argument("--journal", default=None, metavar="PATH",
                   help="record of finished calls (default: DIR/build-journal.jsonl; for an s3:// --out, "
                        "OUT/.build/journal.jsonl next to the output, so a retried pod repeats no call, worked "
                        f"on in ${BUILD_CACHE_ENV} or {DEFAULT_BUILD_CACHE}, one folder per --out)")
    b.set_defaults(func=run)


def _add_knobs(b) -> None:
    from lvr_trainer.data.build.client import MAX_RETRIES, READ_TIMEOUT_S
    from lvr_trainer.data.build.questions import CATEGORY_GUIDES, STRUCTURED_MODES

    numbers = [  # flag, metavar, type, default, help
        ("--clip-seconds", "S", float, 10.0, "clip length to caption"),
        ("--frames-per-clip", "N", int, 4, "frames sent per clip"),
        ("--max-pixels", "N", int, 448 * 448, "pixel budget per frame, aspect kept"),
        ("--questions-per-category", "N", int, 2, "questions asked per video and category"),
        ("--concurrency", "N", int, DEFAULT_CONCURRENCY, "most requests in flight, both endpoints together"),
        ("--timeout", "S", float, READ_TIMEOUT_S, "seconds to wait for a server's reply, per attempt"),
        ("--max-retries", "N", int, MAX_RETRIES, "retries of a call on 408/409/429/5xx/timeouts/connection errors"),
        ("--near-duplicate", "J", float, 0.85, "word overlap (Jaccard) that makes two questions of a video "
                                               "near-duplicates"),
        ("--letter-slack", "X", float, 0.25, "a letter may answer up to (1 + X)/4 of a category's questions"),
        ("--val-fraction", "F", float, 0.1, "share of videos in val"),
        ("--test-fraction", "F", float, 0.1, "share of videos in test"),
        ("--seed", "N", int, 0, "seed of the split by video"),
    ]
    for flag, metavar, kind, default, text in numbers:
        b.add_argument(flag, metavar=metavar, type=kind, default=default, help=f"{text} (default {default:g})")
    b.add_argument("--categories", nargs="+", default=list(CATEGORY_GUIDES), choices=list(CATEGORY_GUIDES),
                   help="question categories (default: all four)")
    b.add_argument("--structured-output", default="json_schema", choices=STRUCTURED_MODES,
                   help="response_format asked of the reasoner (default json_schema; json_object or none for "
                        "servers without structured output)")
    b.add_argument("--no-blind-filter", action="store_true",
                   help="skip the text-only pass without captions (saves one call per question)")


def read_api_key(env_name: str | None, file: str | None, environ=None) -> str | None:
    """The key from the named variable or file; None when neither is given. Raises ValueError."""
    environ = os.environ if environ is None else environ
    if env_name:
        value = environ.get(env_name, "").strip()
        if not value:
            raise ValueError(f"--api-key-env {env_name}: that environment variable is not set or empty; "
                             f"export {env_name}=... first")
        return value
    if file:
        try:
            value = Path(file).expanduser().read_text().strip()
        except OSError as err:
            raise ValueError(f"--api-key-file {file}: cannot read it ({err.strerror})") from None
        if not value:
            raise ValueError(f"--api-key-file {file}: the file is empty")
        return value
    return None


def check_args(args) -> None:
    """Raise ValueError naming the flag and a valid value."""
    checks = [
        (args.clip_seconds > 0, "--clip-seconds must be positive"),
        (1 <= args.frames_per_clip <= 64, "--frames-per-clip must be in [1, 64]"),
        (args.max_pixels >= 28 * 28, "--max-pixels must be at least 784 (28x28)"),
        (1 <= args.questions_per_category <= 20, "--questions-per-category must be in [1, 20]"),
        (1 <= args.concurrency <= 256, "--concurrency must be in [1, 256]"),
        (args.timeout > 0, "--timeout must be positive"),
        (0 <= args.max_retries <= 20, "--max-retries must be in [0, 20]"),
        (0 < args.near_duplicate <= 1, "--near-duplicate is a word overlap in (0, 1]"),
        (args.letter_slack >= 0, "--letter-slack must be >= 0"),
        (0 <= args.val_fraction < 1 and 0 <= args.test_fraction < 1
         and args.val_fraction + args.test_fraction < 1, "--val-fraction + --test-fraction must be below 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    if args.out.startswith("s3://") and not args.videos.startswith("s3://"):
        raise ValueError("an s3:// --out needs s3:// --videos: the rows must name videos the training pods can "
                         "read; upload the videos (e.g. `mc cp -r DIR s3://bucket/videos/`) and pass that prefix")


def journal_path(args) -> Path:
    if args.journal:
        return Path(args.journal).expanduser()
    if not args.out.startswith("s3://"):
        return Path(args.out) / "build-journal.jsonl"
    return work_dir(args.out) / "journal.jsonl"


def work_dir(out_uri: str) -> Path:
    base = Path(os.environ.get(BUILD_CACHE_ENV) or DEFAULT_BUILD_CACHE).expanduser()
    return base / hashlib.sha256(out_uri.encode()).hexdigest()[:16]


def run(args) -> int:
    from lvr_trainer.cli import CLIError
    from lvr_trainer.data.build.run import BuildFailed, build

    try:
        check_args(args)
        api_key = read_api_key(args.api_key_env, args.api_key_file)
    except ValueError as err:
        raise CLIError(str(err)) from None
    try:
        return build(args, api_key, journal_path(args), work_dir(args.out))
    except BuildFailed as err:
        raise CLIError(str(err)) from None
