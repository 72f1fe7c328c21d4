"""How much GRPO can gain from a policy's own samples: greedy vs. sampled accuracy per category.

GRPO raises the probability of the replies that beat their group. What that buys at greedy decoding
depends on where the right answers already are in the sampling distribution:
- `majority@K` above `greedy`: the right answer is the policy's most likely one but greedy decoding
  misses it; sharpening (what group-relative updates do first) turns this into greedy accuracy.
- `greedy-wrong solved`: of the questions greedy gets wrong, the share with at least one right sample
  among K. Only these give a group with a learning signal towards the right answer; when majority@K
  equals greedy, every gain must come from them, i.e. from learning a skill the model lacks, not from
  sharpening one it has.

`lvr eval --samples K --temperature T` prints this table next to the usual one. Pure functions here.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lvr_trainer.eval.scoring import OVERALL
from lvr_trainer.utils.table import format_table


@dataclass(frozen=True)
class SampledQuestion:
    """One question: its correct letter, what greedy decoding chose, and the K sampled choices."""

    category: str
    answer: str
    greedy: str | None
    samples: tuple[str | None, ...]

    @property
    def sampled_accuracy(self) -> float:
        return sum(s == self.answer for s in self.samples) / len(self.samples)

    @property
    def majority(self) -> str | None:
        """The most frequent readable choice; ties go to the choice sampled first (deterministic)."""
        counts = Counter(s for s in self.samples if s is not None)
        if not counts:
            return None
        best = max(counts.values())
        return next(s for s in self.samples if s is not None and counts[s] == best)


@dataclass(frozen=True)
class Headroom:
    """Aggregates over n questions (fractions in [0, 1]); greedy_wrong_solved is None when greedy erred on none."""

    n: int
    greedy: float
    sampled: float
    pass_at_k: float
    majority_at_k: float
    greedy_wrong: int
    greedy_wrong_solved: float | None


def headroom(questions: Sequence[SampledQuestion]) -> Headroom:
    """Greedy accuracy, mean sampled accuracy, pass@K, majority@K, and the greedy errors some sample fixes."""
    n = len(questions)
    if n == 0:
        raise ValueError("headroom needs at least one question")
    wrong = [q for q in questions if q.greedy != q.answer]
    solved = [q for q in wrong if q.answer in q.samples]
    return Headroom(
        n=n,
        greedy=sum(q.greedy == q.answer for q in questions) / n,
        sampled=sum(q.sampled_accuracy for q in questions) / n,
        pass_at_k=sum(q.answer in q.samples for q in questions) / n,
        majority_at_k=sum(q.majority == q.answer for q in questions) / n,
        greedy_wrong=len(wrong),
        greedy_wrong_solved=len(solved) / len(wrong) if wrong else None,
    )


def headroom_by_category(questions: Sequence[SampledQuestion]) -> dict[str, Headroom]:
    """`headroom` per category (sorted) and `overall`."""
    cats = sorted({q.category for q in questions})
    out = {c: headroom([q for q in questions if q.category == c]) for c in cats}
    out[OVERALL] = headroom(questions)
    return out


def headroom_table(table: dict[str, Headroom], k: int, temperature: float) -> str:
    """Markdown table of `headroom_by_category`'s result, in percent."""
    pct = (lambda x: "-" if x is None else f"{100 * x:.1f}%")  # noqa: E731
    rows = [[cat, h.n, pct(h.greedy), pct(h.sampled), pct(h.pass_at_k), pct(h.majority_at_k),
             f"{h.greedy_wrong}: {pct(h.greedy_wrong_solved)}"] for cat, h in table.items()]
    headers = ["category", "n", "greedy", f"sampled (T={temperature:g})", f"pass@{k}", f"majority@{k}",
               f"greedy wrong: solved by a sample"]
    return format_table(headers, rows)


def write_headroom(out_dir: str | Path, by_frames: dict[int, dict[str, Headroom]], k: int,
                   temperature: float) -> Path:
    """headroom.json beside `write_results`' files: the per-category table for each frame count."""
    path = Path(out_dir) / "headroom.json"
    payload = {"samples": k, "temperature": temperature,
               "by_frames": {str(f): {c: dataclasses.asdict(h) for c, h in t.items()} for f, t in by_frames.items()}}
    path.write_text(json.dumps(payload, indent=2))
    return path
