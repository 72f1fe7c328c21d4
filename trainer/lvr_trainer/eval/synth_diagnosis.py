"""Where a model fails on the synthetic dataset: seeing the video, or reasoning from what it saw.

Every synthetic reasoning chain starts with the event log ("The squares in order: 1 blue top-right, ...")
and then derives the answer from it. Reading the log back out of a reply separates two failures that
accuracy alone mixes up:

- perception: the events in the reply's log against the true ones (colour and corner per event);
- reasoning: the answer the reply gives against the answer its *own* log implies (re-derived here).

A model whose log is right but whose answer does not follow from it fails at reasoning, which is what
GRPO's answer reward can reach; a model that cannot see the corners fails spatial questions whatever
the policy does. For "which appeared first/last" questions whose answer is not A it also counts replies
whose conclusion names option A: the slip of the synthetic teacher (`lvr data synth --teacher-slip`),
imitated by SFT and unlearnt by GRPO. Used by BENCHMARKS.md's GRPO analysis:

    python -m lvr_trainer.eval.synth_diagnosis runs/eval/replies.jsonl data/synth-1200/test.jsonl
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

from lvr_trainer.algo.answers import extract_choice
from lvr_trainer.data.schema import VideoQARecord
from lvr_trainer.data.synth import SLIPPABLE
from lvr_trainer.eval.compare import read_replies
from lvr_trainer.utils.table import format_table

_LOG = re.compile(r"in order:(.*?)\.")
_ITEM = re.compile(r"(\d+) ([a-z]+) ((?:top|bottom)-(?:left|right))")
_CONCLUSION = re.compile(r"The (?:first|last) to appear is ([a-z]+)\.")

Event = tuple[str, str]  # (colour, corner)


def _squash(text: str) -> str:
    """Undo a word-level tokenizer's spacing: 'top - right' -> 'top-right', 'order :' -> 'order:'."""
    return re.sub(r"\s*-\s*", "-", re.sub(r"\s+([:.,;)])", r"\1", text))


def event_log(text: str) -> list[Event] | None:
    """The (colour, corner) events listed after 'in order:' in a reply or reasoning, or None."""
    m = _LOG.search(_squash(text))
    return [(colour, corner) for _, colour, corner in _ITEM.findall(m.group(1))] if m else None


def answer_from_log(record: VideoQARecord, events: list[Event]) -> str | None:
    """The option letter `record`'s question has if the video's events were `events`; None when the
    log cannot answer it (e.g. the subject colour is missing from it)."""
    qtype = record.meta.get("qtype")
    colours = [c for c, _ in events]
    if qtype in ("first_of", "last_of"):
        order = colours if qtype == "first_of" else colours[::-1]
        seen = [c for c in record.options.values() if c in order]
        value = min(seen, key=order.index) if seen else None
    elif qtype == "after":
        subject = record.meta.get("subject")
        at = colours.index(subject) + 1 if subject in colours else len(colours)
        value = colours[at] if at < len(colours) else None
    elif qtype == "most_often":
        value = Counter(colours).most_common(1)[0][0] if colours else None
    elif qtype == "second_position":
        corners = [corner for c, corner in events if c == record.meta.get("subject")]
        value = corners[1] if len(corners) > 1 else None
    else:
        return None
    return next((k for k, v in record.options.items() if v == value), None)


def slip_counts(record: VideoQARecord, reply: str) -> dict[str, float]:
    """For a first/last question whose answer is not A: whether the reply's conclusion names option A
    (the teacher slip's position bias). Empty for other questions, where the slip cannot be told apart."""
    if record.meta.get("qtype") not in SLIPPABLE or record.answer == "A":
        return {}
    m = _CONCLUSION.search(_squash(reply))
    return {"slip_eligible": 1.0, "slip_followed": float(bool(m) and m.group(1) == record.options["A"])}


def diagnose_reply(record: VideoQARecord, reply: str) -> dict[str, float]:
    """Per-reply counts (summed by `diagnose`): correct, events, colours/corners right, has_log,
    consistent (answer == the one its own log implies), log_implies_truth, and `slip_counts`."""
    given = extract_choice(reply, tuple(record.options))
    out = {"n": 1, "correct": float(given == record.answer), **slip_counts(record, reply)}
    truth, own = event_log(record.reasoning or ""), event_log(reply)
    if truth is None or own is None:
        return {**out, "has_log": 0.0}
    implied = answer_from_log(record, own)
    return {**out, "has_log": 1.0, "events": float(len(truth)),
            "colour_right": float(sum(a[0] == b[0] for a, b in zip(own, truth))),
            "corner_right": float(sum(a[1] == b[1] for a, b in zip(own, truth))),
            "consistent": float(implied is not None and implied == given),
            "log_implies_truth": float(implied == record.answer)}


def diagnose(records: dict[str, VideoQARecord], replies: list[dict]) -> dict[str, dict[str, float]]:
    """Rates per category and overall, from `lvr eval`'s replies.jsonl rows ({id, reply, ...})."""
    sums: dict[str, Counter] = {}
    for row in replies:
        record = records[row["id"]]
        counts = diagnose_reply(record, row["reply"])
        for group in (record.category, "overall"):
            sums.setdefault(group, Counter()).update(counts)
    rates = {}
    for group, s in sums.items():
        n, logs, events = s["n"], max(s["has_log"], 1), max(s["events"], 1)
        rates[group] = {"n": n, "accuracy": s["correct"] / n, "has_log": s["has_log"] / n,
                        "colour": s["colour_right"] / events, "corner": s["corner_right"] / events,
                        "consistent": s["consistent"] / logs, "log_implies_truth": s["log_implies_truth"] / logs,
                        "slip_eligible": s["slip_eligible"],
                        "slip": s["slip_followed"] / s["slip_eligible"] if s["slip_eligible"] else None}
    return rates


def format_diagnosis(rates: dict[str, dict[str, float]]) -> str:
    cols = ("accuracy", "colour", "corner", "consistent", "log_implies_truth")
    order = sorted(rates, key=lambda g: (g == "overall", g))
    rows = [[g, int(rates[g]["n"]), *(f"{100 * rates[g][c]:.0f}%" for c in cols), _slip_cell(rates[g])]
            for g in order]
    return format_table(["category", "n", "strict acc", "colour ok", "corner ok", "answer follows own log",
                         "own log implies truth", "concludes A (teacher slip)"], rows)


def _slip_cell(rate: dict) -> str:
    if rate["slip"] is None:
        return "-"
    return f"{100 * rate['slip']:.0f}% of {int(rate['slip_eligible'])}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("replies", type=Path, help="replies.jsonl written by `lvr eval`")
    parser.add_argument("data", type=Path, help="the JSONL the replies answer (with reasoning and meta)")
    args = parser.parse_args(argv)
    records = {}
    for line in args.data.read_text().splitlines():
        if line.strip():
            rec = VideoQARecord.model_validate_json(line)
            records[rec.id] = rec
    replies = read_replies(args.replies)
    print(format_diagnosis(diagnose(records, replies)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
