"""Did a checkpoint get better? A paired comparison of two `lvr eval` runs on the same questions.

Two accuracies measured on the same 200 questions are not independent samples: most questions are
answered the same way by both models. The test that uses that (McNemar's) looks only at the questions
whose outcome changed: under "no real difference" a question is as likely to flip wrong -> right as
right -> wrong, so the number of gains among the flips is Binomial(flips, 1/2). Used by BENCHMARKS.md's
GRPO section and by the slow test that checks RL's held-out gain:

    python -m lvr_trainer.eval.compare runs/eval-sft/replies.jsonl runs/eval-rl/replies.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

from lvr_trainer.utils.table import format_table


@dataclass(frozen=True)
class PairedGain:
    """Outcome of the same `n` questions before and after."""

    n: int
    right_before: int
    right_after: int
    gained: int  # wrong -> right
    lost: int  # right -> wrong

    @property
    def accuracy_before(self) -> float:
        return self.right_before / self.n if self.n else 0.0

    @property
    def accuracy_after(self) -> float:
        return self.right_after / self.n if self.n else 0.0

    @property
    def z(self) -> float:
        """McNemar's statistic, signed: (gained - lost) / sqrt(gained + lost); 0 when nothing flipped."""
        flips = self.gained + self.lost
        return (self.gained - self.lost) / math.sqrt(flips) if flips else 0.0

    @property
    def p_value(self) -> float:
        """Exact one-sided p: the chance of at least `gained` gains among the flips if each flip were a
        fair coin (no real improvement)."""
        flips = self.gained + self.lost
        return sum(math.comb(flips, k) for k in range(self.gained, flips + 1)) / 2 ** flips


def _outcomes(rows: list[dict]) -> dict[tuple, tuple[bool, str]]:
    """(id, frames) -> (answered right under the strict scorer, category) from replies.jsonl rows."""
    return {(r["id"], r.get("frames")): (r.get("strict") == r["answer"], r.get("category", "")) for r in rows}


def paired_gain(before: list[dict], after: list[dict], category: str | None = None) -> PairedGain:
    """Compare two runs' replies.jsonl rows on the questions both answered (optionally one category)."""
    b, a = _outcomes(before), _outcomes(after)
    ids = [i for i in b if i in a and (category is None or b[i][1] == category)]
    if not ids:
        raise ValueError("the two runs share no question ids; were they evaluated on the same data and --limit?")
    pairs = [(b[i][0], a[i][0]) for i in ids]
    return PairedGain(n=len(pairs), right_before=sum(x for x, _ in pairs), right_after=sum(y for _, y in pairs),
                      gained=sum(not x and y for x, y in pairs), lost=sum(x and not y for x, y in pairs))


def format_comparison(before: list[dict], after: list[dict]) -> str:
    """One row per category and one overall: accuracies, flips, z and p."""
    categories = sorted({r.get("category", "") for r in before} - {""})
    rows = []
    for cat in [*categories, None]:
        g = paired_gain(before, after, cat)
        rows.append([cat or "overall", g.n, f"{100 * g.accuracy_before:.1f}%", f"{100 * g.accuracy_after:.1f}%",
                     g.gained, g.lost, round(g.z, 2), f"{g.p_value:.2g}"])
    return format_table(["category", "n", "before", "after", "wrong->right", "right->wrong", "z", "p (one-sided)"],
                        rows)


def read_replies(path: Path) -> list[dict]:
    """The rows of a replies.jsonl written by `lvr eval` (blank lines skipped)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="replies.jsonl of the reference model (`lvr eval --out`)")
    parser.add_argument("after", type=Path, help="replies.jsonl of the candidate, same data and --limit")
    args = parser.parse_args(argv)
    print(format_comparison(read_replies(args.before), read_replies(args.after)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
