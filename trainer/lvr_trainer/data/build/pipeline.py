"""The build's I/O shell: videos -> clips -> captions -> questions -> filters, with bounded concurrency.

Two thread pools: `concurrency` video workers walk their videos through the stages, and a call pool of
`concurrency` workers makes the HTTP calls, so at most `concurrency` requests are in flight whatever the
mix of stages (a long video's clips are captioned in parallel; short videos overlap). Every call goes
through the journal first: a call an earlier run finished is answered from disk, not repeated.

Failures are sorted by what they mean:
- a video that does not decode: skipped and named; the others go on.
- a call that fails after retries (timeouts, 429, 5xx, a refused request): that item is dropped as
  `call_failed` and not journaled, so a rerun tries it again.
- an endpoint that refuses connections after retries (server down), or refuses the key (401/403) or
  the URL (404): `EndpointUnusable` stops the run at once, since every other call would fail the same
  way; every call already answered is in the journal, and the same command resumes.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from lvr_trainer.data.build.caption import Caption, caption_request, caption_sequence, fmt_time, parse_caption
from lvr_trainer.data.build.client import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    ChatClient,
    ChatError,
    NotFoundError,
    Reply,
)
from lvr_trainer.data.build.clips import VideoClips, VideoSource, clip_images, plan_video
from lvr_trainer.data.build.filters import blind_request, dedupe, parse_blind
from lvr_trainer.data.build.journal import CallJournal, request_key
from lvr_trainer.data.build.questions import (
    CATEGORY_GUIDES,
    Draft,
    Drop,
    Parsed,
    parse_questions,
    question_request,
    repair_request,
)
from lvr_trainer.data.build.summary import BuildStats
from lvr_trainer.data.s3_videos import VideoUnavailable
from lvr_trainer.data.video import VideoError


@dataclass(frozen=True)
class BuildConfig:
    """The knobs of one build; `lvr data build --help` documents each."""

    captioner_model: str
    reasoner_model: str
    clip_seconds: float = 10.0
    frames_per_clip: int = 4
    max_pixels: int = 448 * 448
    questions_per_category: int = 2
    categories: tuple[str, ...] = tuple(CATEGORY_GUIDES)
    concurrency: int = 8
    blind_filter: bool = True
    near_duplicate: float = 0.85
    structured: str = "json_schema"


@dataclass
class VideoResult:
    source: VideoSource
    duration: float = 0.0
    captions: list[Caption] = field(default_factory=list)
    drafts: list[Draft] = field(default_factory=list)
    drops: list[Drop] = field(default_factory=list)
    skipped: str | None = None  # why the video was skipped
    generated: int = 0          # questions in the replies, usable or not
    blind_inconclusive: int = 0


class EndpointUnusable(Exception):
    """An endpoint is down (connections refused after all retries) or refuses our key or URL: stop,
    keep the journal, resume later."""


class _CallFailed(Exception):
    """One call failed after its retries; the item it was for is dropped as call_failed."""


class _Stopped(Exception):
    """The run is stopping (Ctrl-C, or an endpoint is down): make no new calls."""


class Builder:
    def __init__(self, cfg: BuildConfig, captioner: ChatClient, reasoner: ChatClient, journal: CallJournal,
                 stats: BuildStats, cancel: threading.Event):
        self.cfg, self.captioner, self.reasoner = cfg, captioner, reasoner
        self.journal, self.stats, self.cancel = journal, stats, cancel
        # the first unusable-endpoint error: raised by `run` even when every video that met it returned
        # early (a video whose other call saw the cancel first stops quietly and drops the error)
        self.fatal: EndpointUnusable | None = None
        self.calls = ThreadPoolExecutor(cfg.concurrency, thread_name_prefix="lvr-build-call")

    def call(self, client: ChatClient, stage: str, body: dict) -> Reply:
        """One chat call through the journal. Raises _CallFailed, EndpointUnusable or _Stopped."""
        key = request_key(body)
        reply = self.journal.get(key)
        if reply is not None:
            self.stats.record_call(stage, reply, 0.0, from_journal=True)
            return reply
        if self.cancel.is_set():
            raise _Stopped()
        t0 = time.monotonic()
        try:
            reply = client.chat(body)
        except (AuthenticationError, NotFoundError) as err:
            hint = ("check --api-key-env/--api-key-file" if isinstance(err, AuthenticationError)
                    else "check the URL (it should end in /v1) and the model name")
            raise self._stop_all(EndpointUnusable(f"{err}; {hint}, then rerun the same command: {self._resume}"))
        except APIConnectionError as err:
            if isinstance(err, APITimeoutError):
                self.stats.record_failure(stage, str(err))
                raise _CallFailed(str(err)) from None
            n = client.policy.max_retries
            raise self._stop_all(EndpointUnusable(
                f"{err} (after {n} retr{'y' if n == 1 else 'ies'}). Start the server (or fix the URL) and rerun "
                f"the same command: {self._resume}"))
        except ChatError as err:
            self.stats.record_failure(stage, str(err))
            raise _CallFailed(str(err)) from None
        seconds = time.monotonic() - t0
        self.journal.put(key, stage, reply, seconds)  # even when stopping: it is paid for
        self.stats.record_call(stage, reply, seconds, from_journal=False)
        return reply

    @property
    def _resume(self) -> str:
        return f"finished calls are kept in the journal {self.journal.path} and not repeated"

    def _stop_all(self, err: EndpointUnusable) -> EndpointUnusable:
        """Remember the first fatal error and stop every new call; returns `err` for the caller to raise."""
        if self.fatal is None:
            self.fatal = err
        self.cancel.set()
        return err

    def run(self, sources: list[VideoSource], on_video=None) -> list[VideoResult]:
        """Every video through the stages; results in `sources` order. Ctrl-C or EndpointUnusable stop new
        calls at once (calls in flight finish and are journaled) and propagate."""
        videos = ThreadPoolExecutor(self.cfg.concurrency, thread_name_prefix="lvr-build-video")
        futures = {videos.submit(self.video, s): i for i, s in enumerate(sources)}
        results: list[VideoResult | None] = [None] * len(sources)
        try:
            for done, fut in enumerate(as_completed(futures), start=1):
                results[futures[fut]] = fut.result()
                if on_video:
                    on_video(done, results[futures[fut]])
            if self.fatal is not None:
                raise self.fatal
        except BaseException:
            self.cancel.set()
            videos.shutdown(wait=False, cancel_futures=True)
            self.calls.shutdown(wait=True, cancel_futures=True)  # calls in flight are paid for: journal them
            raise
        videos.shutdown()
        self.calls.shutdown()
        return [r for r in results if r is not None]

    def video(self, source: VideoSource) -> VideoResult:
        """One video through captions, questions, dedupe and the blind filter."""
        result = VideoResult(source)
        try:
            planned = plan_video(source, self.cfg.clip_seconds, self.cfg.frames_per_clip, self.cfg.max_pixels)
            result.duration = planned.duration
            result.captions = self._captions(planned)
        except VideoUnavailable:
            raise
        except VideoError as err:
            result.skipped = f"{err.kind} video: {err.detail}"
            return result
        except _CallFailed as err:
            result.skipped = f"captions incomplete: {err}"
            return result
        except (_Stopped, CancelledError):
            return result
        drafts = self._questions(result)
        drafts, drops = dedupe(drafts, self.cfg.near_duplicate)
        result.drops += drops
        result.drafts = self._blind(drafts, result) if self.cfg.blind_filter else drafts
        return result

    def _captions(self, video: VideoClips) -> list[Caption]:
        total = len(video.clips)

        def one(clip) -> Caption:
            body = caption_request(self.cfg.captioner_model, clip.index, total, clip.start, clip.end,
                                   clip_images(video, clip))
            text = parse_caption(self.call(self.captioner, "caption", body).content)
            if text is None:
                raise _CallFailed(f"empty caption for clip {clip.index + 1} of {total}")
            return Caption(clip.index, clip.start, clip.end, text)

        futures = [self.calls.submit(one, clip) for clip in video.clips]
        return [f.result() for f in futures]

    def _questions(self, result: VideoResult) -> list[Draft]:
        text, duration = caption_sequence(result.captions), fmt_time(result.duration)
        vid = result.source.video_id
        bodies = {c: question_request(self.cfg.reasoner_model, text, duration, c, self.cfg.questions_per_category,
                                      self.cfg.structured) for c in self.cfg.categories}
        futures = {c: self.calls.submit(self._ask, vid, c, body) for c, body in bodies.items()}
        drafts: list[Draft] = []
        for category, fut in futures.items():
            try:
                parsed = fut.result()
            except _CallFailed as err:
                result.drops.append(Drop("call_failed", str(err), vid, category))
                continue
            except (_Stopped, CancelledError):
                continue
            if parsed.failure:  # counted once per reply: how many questions it held is unknown
                result.drops.append(Drop(parsed.failure, "; ".join(parsed.problems), vid, category))
            drafts += parsed.drafts
            result.drops += parsed.drops
            result.generated += len(parsed.drafts) + len(parsed.drops)
        return drafts

    def _ask(self, video_id: str, category: str, body: dict) -> Parsed:
        """The question call, and one repair call when the reply has any problem."""
        content = self.call(self.reasoner, "questions", body).content
        first = parse_questions(content, video_id, category)
        if not first.problems:
            return first
        try:
            fixed = self.call(self.reasoner, "repair", repair_request(body, content, first.problems)).content
        except _CallFailed:
            if first.failure:
                raise
            return first  # the usable questions of the first reply, its bad ones dropped
        second = parse_questions(fixed, video_id, category)
        if second.failure and not first.failure:
            return first  # the repair made it worse: keep what the first reply had
        return second

    def _blind(self, drafts: list[Draft], result: VideoResult) -> list[Draft]:
        bodies = [blind_request(self.cfg.reasoner_model, d, self.cfg.structured) for d in drafts]
        futures = [self.calls.submit(self.call, self.reasoner, "blind", b) for b in bodies]
        kept = []
        for d, fut in zip(drafts, futures):
            try:
                letter = parse_blind(fut.result().content)
            except _CallFailed as err:
                result.drops.append(Drop("call_failed", f"blind pass: {err}", d.video_id, d.category, d.question))
                continue
            except (_Stopped, CancelledError):
                continue
            if letter is None:
                result.blind_inconclusive += 1
            if letter == d.answer:
                result.drops.append(Drop("blind_answerable", f"answered {letter} without the captions",
                                         d.video_id, d.category, d.question))
            else:
                kept.append(d)
        return kept
