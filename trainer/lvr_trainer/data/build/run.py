"""One `lvr data build` run: endpoints, videos, the pipeline, the dataset-wide filter, the files, the
summary. Wiring only; the stages live in their own modules."""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from pathlib import Path

from lvr_trainer.data.build.client import ChatClient, ChatError, RetryPolicy
from lvr_trainer.data.build.clips import VIDEO_SUFFIXES, BuildInputError, VideoSource, list_videos
from lvr_trainer.data.build.filters import balance_letters
from lvr_trainer.data.build.journal import CallJournal
from lvr_trainer.data.build.pipeline import Builder, BuildConfig, EndpointUnusable, VideoResult
from lvr_trainer.data.build.summary import BuildStats, summary_text
from lvr_trainer.data.build.writer import split_videos, upload_dir, write_dataset
from lvr_trainer.data.s3_videos import VideoUnavailable
from lvr_trainer.storage.errors import StoreError


class BuildFailed(Exception):
    """The build cannot go on; the message says why and how to resume."""


def connect(url: str, model: str | None, api_key: str | None, policy: RetryPolicy,
            cancel: threading.Event, flag: str) -> tuple[ChatClient, str]:
    """The client and the model name (the first of GET /models when not given)."""
    try:
        client = ChatClient(url, api_key, policy, cancel)
    except ValueError as err:
        raise BuildFailed(f"--{flag}: {err}") from None
    if model:
        return client, model
    try:
        models = client.models()
    except ChatError as err:
        raise BuildFailed(f"--{flag}: cannot list its models ({err}); start the server, fix the URL, or name "
                          f"the model with --{flag}-model") from None
    if not models:
        raise BuildFailed(f"--{flag} {url} serves no model; name one with --{flag}-model")
    return client, models[0]


def find_videos(root: str) -> list[VideoSource]:
    try:
        sources = list_videos(root)
    except BuildInputError as err:
        raise BuildFailed(str(err)) from None
    if not sources:
        raise BuildFailed(f"--videos {root}: no video files ({', '.join(VIDEO_SUFFIXES)}) there")
    return sources


def build(args, api_key: str | None, journal_path: Path, work: Path) -> int:
    """The whole command; returns the exit code. Raises BuildFailed."""
    t0 = time.monotonic()
    cancel = threading.Event()
    policy = RetryPolicy(max_retries=args.max_retries, read_timeout_s=args.timeout)
    sources = find_videos(args.videos)
    captioner, cap_model = connect(args.captioner, args.captioner_model, api_key, policy, cancel, "captioner")
    reasoner, rea_model = connect(args.reasoner, args.reasoner_model, api_key, policy, cancel, "reasoner")
    cfg = BuildConfig(cap_model, rea_model, args.clip_seconds, args.frames_per_clip, args.max_pixels,
                      args.questions_per_category, tuple(args.categories), args.concurrency,
                      not args.no_blind_filter, args.near_duplicate, args.structured_output)
    mirror = journal_mirror(args, journal_path)
    journal = CallJournal(journal_path, on_record=mirror.changed if mirror else None)
    stats = BuildStats(videos_found=len(sources))
    where = f"{journal_path}" + (f", mirrored to {mirror.uri}" if mirror else "")
    print(f"build: {len(sources)} videos; captioner {cap_model} at {captioner.url}; reasoner {rea_model} at "
          f"{reasoner.url}; journal {where} ({len(journal)} finished calls)", file=sys.stderr)
    try:
        results = run_pipeline(Builder(cfg, captioner, reasoner, journal, stats, cancel), sources, stats)
    finally:
        stats.retries = captioner.counters.retries + reasoner.counters.retries
        journal.close()
        if mirror:
            mirror.close()
    kept, drops = gather(results, stats, args.letter_slack)
    stats.wall_seconds = time.monotonic() - t0
    split = split_videos(sorted({d.video_id for d in kept}), args.val_fraction, args.test_fraction, args.seed)
    meta = {"captioner": cap_model, "reasoner": rea_model}
    s3_out = args.out.startswith("s3://")
    stage = work / "out" if s3_out else Path(args.out)
    if s3_out:
        shutil.rmtree(stage, ignore_errors=True)
    manifest = write_dataset(stage, results, kept, drops, stats, split, None if s3_out else args.out, meta)
    if s3_out:
        upload_dir(stage, args.out)
    human = sys.stderr if args.json else sys.stdout   # --json: stdout holds the report alone
    print(summary_text(stats), file=human)
    counts = ", ".join(f"{k} {v}" for k, v in manifest["questions"].items())
    print(f"wrote {args.out}: {counts} questions; check it with `lvr data validate {args.out}/train.jsonl`",
          file=human)
    print_hints(stats)
    if args.json:
        print(json.dumps(compact_report(stats, manifest, args.out)))
    return 0


def journal_mirror(args, journal_path: Path):
    """For an s3:// --out without --journal: the journal kept next to the output (restored now, mirrored
    while the build runs), so that a retried pod on a new disk repeats no finished call."""
    if args.journal or not args.out.startswith("s3://"):
        return None
    from lvr_trainer.data.build.journal_mirror import JournalMirror

    try:
        mirror = JournalMirror(args.out, journal_path)
        if mirror.restore():
            print(f"build: journal restored from {mirror.uri}", file=sys.stderr)
    except StoreError as err:
        raise BuildFailed(f"--out {args.out}: the build journal kept there cannot be read: {err}") from None
    mirror.start()
    return mirror


def compact_report(stats: BuildStats, manifest: dict, out: str) -> dict:
    """What a LongVideoDataset's status shows of the build (a termination message: at most a few KB)."""
    total = stats.total()
    return {"out": out, "videos": stats.videos_found, "built": stats.videos_built, "skipped": len(stats.skipped),
            "skipped_videos": [f"{v}: {r}"[:200] for v, r in stats.skipped[:5]], "clips": stats.clips,
            "questions": stats.generated, "kept": stats.kept, "dropped": dict(stats.dropped),
            "splits": manifest["questions"], "calls": total.calls, "calls_from_journal": total.journal,
            "calls_failed": total.failed, "seconds": round(stats.wall_seconds, 1)}


def run_pipeline(builder: Builder, sources: list[VideoSource], stats: BuildStats) -> list[VideoResult]:
    """The pipeline with a progress line; EndpointUnusable and unreachable S3 become BuildFailed."""
    from lvr_trainer.utils.progress import Progress

    bar = Progress(len(sources), "build: videos")
    questions = 0

    def on_video(done: int, result: VideoResult) -> None:
        nonlocal questions
        questions += len(result.drafts)
        t = stats.total()
        bar.update(done, f"calls {t.calls} new, {t.journal} from journal, {t.failed} failed; "
                         f"{questions} questions so far")

    try:
        return builder.run(sources, on_video)
    except EndpointUnusable as err:
        raise BuildFailed(f"stopped: {err}") from None
    except VideoUnavailable as err:
        raise BuildFailed(f"stopped: {err}; finished calls are kept in the journal {builder.journal.path}") from None


def gather(results: list[VideoResult], stats: BuildStats, letter_slack: float):
    """All videos' drafts through the dataset-wide letter balance; per-video counts into `stats`."""
    drafts, drops = [], []
    for r in results:
        if r.skipped:
            stats.skipped.append((r.source.location, r.skipped))
            continue
        stats.videos_built += 1
        stats.clips += len(r.captions)
        stats.generated += r.generated
        stats.blind_inconclusive += r.blind_inconclusive
        drafts += r.drafts
        drops += r.drops
    kept, imbalance = balance_letters(drafts, letter_slack)
    drops += imbalance
    for d in drops:
        stats.dropped[d.reason] += 1
    stats.kept = len(kept)
    return kept, drops


def print_hints(stats: BuildStats) -> None:
    """What to do about failed calls, in the user's terms."""
    failed = {name: s for name, s in stats.stages.items() if s.failed}
    for name, s in failed.items():
        print(f"{s.failed} {name} calls failed after retries; last: {s.last_error}", file=sys.stderr)
        if name in ("questions", "repair", "blind") and "HTTP 400" in s.last_error:
            print("  the reasoner refused the request: if it lacks structured output, try "
                  "--structured-output json_object (or none)", file=sys.stderr)
    if failed:
        print("rerun the same command to retry them: finished calls are answered from the journal",
              file=sys.stderr)
