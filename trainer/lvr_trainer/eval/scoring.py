"""Scoring `lvr eval` replies to 4-option questions, and the accuracy tables built from the scores.

Two scorers, both reading letters with `lvr_trainer.algo.answers` (the same code as the mc reward):
- `strict`: the letter inside the last `<answer>…</answer>` span (`answers.extract_choice`); what the RL
  reward pays for and what the paper's numbers mean.
- `lenient`: a letter found anywhere in the reply (`answers.find_choice_lenient`, rules there); it credits
  a model that knows the answer but breaks the format, so strict <= lenient item by item.
Aggregates: accuracy per category (temporal, goal, spatial, plot, other) and overall; per VideoMME-style
duration bucket; the rate of well-formed answers (a letter the strict scorer can read). Pure functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from lvr_trainer.algo.answers import DEFAULT_LETTERS, extract_choice, find_choice_lenient
from lvr_trainer.data.schema import CATEGORIES
from lvr_trainer.utils.table import format_table

OVERALL = "overall"


class ScorerName(str, Enum):
    strict = "strict"
    lenient = "lenient"


SCORERS: dict[ScorerName, Callable[[str, Sequence[str]], str | None]] = {
    ScorerName.strict: extract_choice,
    ScorerName.lenient: find_choice_lenient,
}

# Video-MME (Fu et al. 2024, arXiv:2405.21075, Sec. 2): short < 2 min, medium 4-15 min, long 30-60 min.
# Its ranges leave gaps; we use its upper bounds as contiguous edges, so every Video-MME video lands in
# its own bucket and any other video is classed too: short <= 120 s < medium <= 900 s < long.
DURATION_BUCKETS: tuple[str, ...] = ("short", "medium", "long")
DURATION_EDGES_S: tuple[float, float] = (120.0, 900.0)


def duration_bucket(seconds: float, edges: tuple[float, float] = DURATION_EDGES_S) -> str:
    """`short` (<= edges[0] s), `medium` (<= edges[1] s) or `long`; default edges 2 and 15 minutes."""
    if seconds <= edges[0]:
        return "short"
    return "medium" if seconds <= edges[1] else "long"


@dataclass(frozen=True)
class ScoredReply:
    """One question's reply as both scorers read it."""

    id: str
    answer: str  # the correct letter
    category: str
    duration: float | None  # seconds; None leaves the item out of the duration buckets
    strict: str | None  # letter read by the strict scorer
    lenient: str | None  # letter read by the lenient scorer

    def choice(self, scorer: ScorerName | str) -> str | None:
        return self.strict if ScorerName(scorer) == ScorerName.strict else self.lenient

    def correct(self, scorer: ScorerName | str) -> bool:
        return self.choice(scorer) == self.answer

    @property
    def well_formed(self) -> bool:
        """The reply states a readable letter in an `<answer>` span."""
        return self.strict is not None


def score_reply(
    reply: str, answer: str, *, id: str = "", category: str = "other", duration: float | None = None,
    letters: Sequence[str] = DEFAULT_LETTERS,
) -> ScoredReply:
    """Read `reply` with both scorers; `answer` is the correct letter (case-insensitive)."""
    gold = answer.strip().upper()
    if gold not in letters:
        raise ValueError(f"question {id or '?'}: answer {answer!r} is not one of {', '.join(letters)}")
    return ScoredReply(id, gold, category, duration,
                       SCORERS[ScorerName.strict](reply, letters), SCORERS[ScorerName.lenient](reply, letters))


@dataclass(frozen=True)
class Accuracy:
    correct: int
    total: int

    @property
    def value(self) -> float | None:
        """correct / total, or None for an empty group."""
        return self.correct / self.total if self.total else None


def accuracy_by(
    items: Iterable[ScoredReply], key: Callable[[ScoredReply], str | None], scorer: ScorerName | str,
    order: Sequence[str] = (),
) -> dict[str, Accuracy]:
    """Accuracy per group `key(item)` (items whose key is None are skipped); groups in `order` come first
    (present even when empty), others follow in first-seen order."""
    counts: dict[str, list[int]] = {name: [0, 0] for name in order}
    for item in items:
        group = key(item)
        if group is None:
            continue
        c = counts.setdefault(group, [0, 0])
        c[0] += item.correct(scorer)
        c[1] += 1
    return {name: Accuracy(*c) for name, c in counts.items()}


def accuracy_by_category(items: Sequence[ScoredReply], scorer: ScorerName | str) -> dict[str, Accuracy]:
    """{temporal, goal, spatial, plot, other, overall: Accuracy} under `scorer`."""
    table = accuracy_by(items, lambda it: it.category, scorer, CATEGORIES)
    table[OVERALL] = Accuracy(sum(it.correct(scorer) for it in items), len(items))
    return table


def accuracy_by_duration(
    items: Sequence[ScoredReply], scorer: ScorerName | str, edges: tuple[float, float] = DURATION_EDGES_S,
) -> dict[str, Accuracy]:
    """{short, medium, long: Accuracy} (`duration_bucket`); items without a duration are left out."""
    return accuracy_by(
        items, lambda it: None if it.duration is None else duration_bucket(it.duration, edges), scorer,
        DURATION_BUCKETS)


def well_formed_rate(items: Sequence[ScoredReply]) -> float:
    """Share of replies with a letter readable in an `<answer>` span (0.0 for no items)."""
    return sum(it.well_formed for it in items) / len(items) if items else 0.0


def _as_json(table: dict[str, Accuracy]) -> dict[str, dict[str, Any]]:
    return {k: {"correct": a.correct, "total": a.total, "accuracy": a.value} for k, a in table.items()}


def summarize(items: Sequence[ScoredReply]) -> dict[str, Any]:
    """JSON-ready results: n, well_formed_rate, and for each scorer by_category (with overall) and
    by_duration."""
    out: dict[str, Any] = {"n": len(items), "well_formed_rate": well_formed_rate(items)}
    for scorer in ScorerName:
        out[scorer.value] = {
            "by_category": _as_json(accuracy_by_category(items, scorer)),
            "by_duration": _as_json(accuracy_by_duration(items, scorer)),
        }
    return out


def results_table(summary: dict[str, Any]) -> str:
    """Markdown table of a `summarize` result: one row per non-empty category, overall, and duration bucket;
    columns n, strict and lenient accuracy (%), then a line with the well-formed rate."""
    rows = []
    for section, label in (("by_category", "{}"), ("by_duration", "duration: {}")):
        for name, cell in summary[ScorerName.strict.value][section].items():
            if not cell["total"]:
                continue
            lenient = summary[ScorerName.lenient.value][section][name]["accuracy"]
            rows.append([label.format(name), cell["total"], 100.0 * cell["accuracy"], 100.0 * lenient])
    table = format_table(["group", "n", "strict %", "lenient %"], rows)
    return f"{table}\n\nwell-formed answers: {100.0 * summary['well_formed_rate']:.1f}% of {summary['n']}"
