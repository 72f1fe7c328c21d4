"""What a build did, in numbers: one thread-safe accumulator, and the tables `lvr data build` prints.

Calls are counted per stage (caption, questions, repair, blind) as made now, answered from the journal,
or failed after retries; tokens are the servers' `usage` of every answered call, journal included (the
cost of the dataset as it stands); call seconds are the summed durations of the calls made now.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from lvr_trainer.data.build.client import Reply
from lvr_trainer.data.build.filters import DROP_REASONS
from lvr_trainer.utils.table import format_table

STAGES = ("caption", "questions", "repair", "blind")


@dataclass
class StageStats:
    calls: int = 0        # answered by the server in this run
    journal: int = 0      # answered from the journal (an earlier run made them)
    failed: int = 0       # failed after retries
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0  # summed duration of this run's calls
    last_error: str = ""


@dataclass
class BuildStats:
    videos_found: int = 0
    videos_built: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (video location, why)
    clips: int = 0
    generated: int = 0    # questions read from replies, usable or not
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    blind_inconclusive: int = 0
    retries: int = 0
    wall_seconds: float = 0.0
    stages: dict[str, StageStats] = field(default_factory=lambda: {s: StageStats() for s in STAGES})
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_call(self, stage: str, reply: Reply, seconds: float, from_journal: bool) -> None:
        with self._lock:
            s = self.stages[stage]
            if from_journal:
                s.journal += 1
            else:
                s.calls += 1
                s.seconds += seconds
            s.prompt_tokens += reply.prompt_tokens
            s.completion_tokens += reply.completion_tokens

    def record_failure(self, stage: str, error: str) -> None:
        with self._lock:
            self.stages[stage].failed += 1
            self.stages[stage].last_error = error

    def total(self) -> StageStats:
        t = StageStats()
        for s in self.stages.values():
            t.calls, t.journal, t.failed = t.calls + s.calls, t.journal + s.journal, t.failed + s.failed
            t.prompt_tokens += s.prompt_tokens
            t.completion_tokens += s.completion_tokens
            t.seconds += s.seconds
        return t

    def to_dict(self) -> dict:
        return {
            "videos": {"found": self.videos_found, "built": self.videos_built, "skipped": len(self.skipped)},
            "skipped": [{"video": v, "reason": r} for v, r in self.skipped],
            "clips": self.clips, "questions": {"generated": self.generated, "kept": self.kept},
            "dropped": {k: self.dropped[k] for k in DROP_REASONS if self.dropped[k]},
            "blind_inconclusive": self.blind_inconclusive, "retries": self.retries,
            "wall_seconds": round(self.wall_seconds, 3),
            "calls": {name: {k: (round(v, 3) if isinstance(v, float) else v) for k, v in s.__dict__.items()}
                      for name, s in {**self.stages, "total": self.total()}.items()},
        }


def calls_table(stats: BuildStats) -> str:
    rows = [[name, s.calls, s.journal, s.failed, s.prompt_tokens, s.completion_tokens, round(s.seconds, 1)]
            for name, s in {**stats.stages, "total": stats.total()}.items()]
    return format_table(["stage", "calls", "from journal", "failed", "prompt tokens", "completion tokens",
                         "call seconds"], rows)


def items_table(stats: BuildStats) -> str:
    n = max(stats.videos_built, 1)
    rows = [
        ["videos found", stats.videos_found, "video files under --videos"],
        ["videos built", stats.videos_built, f"captioned and questioned; {stats.wall_seconds / n:.2f} s per video"],
        ["videos skipped", len(stats.skipped), "listed below with the reason"],
        ["clips", stats.clips, "captioned clips of the built videos"],
        ["questions generated", stats.generated, "questions in the reasoner's replies"],
        ["kept", stats.kept, "rows written to train/val/test"],
    ]
    rows += [[f"dropped: {k}", stats.dropped[k], DROP_REASONS[k]] for k in DROP_REASONS if stats.dropped[k]]
    if stats.blind_inconclusive:
        rows.append(["blind inconclusive", stats.blind_inconclusive, "kept: the blind reply named no letter"])
    return format_table(["item", "count", "meaning"], rows)


def summary_text(stats: BuildStats) -> str:
    """The tables and the skipped videos, as printed and as written to summary.md."""
    parts = [items_table(stats), "", calls_table(stats),
             f"\n{stats.retries} retries; {stats.wall_seconds:.1f} s wall time"]
    if stats.skipped:
        parts.append("skipped videos:")
        parts += [f"  {v}: {r}" for v, r in stats.skipped]
    return "\n".join(parts)
