"""Stage 4: filters. Every dropped item is counted under one reason (`DROP_REASONS`).

- duplicates: the same question (case, punctuation and spacing aside, with the same options) twice for
  one video, or a near-duplicate: word-set overlap (Jaccard) of question + options at or above a
  threshold. The first one asked is kept.
- blind: the question and options go to the reasoner *without* the captions; a correct answer means the
  question is answerable from common sense or from the options' wording, not from the video, so it is
  dropped. A reply that cannot be read keeps the question (counted as inconclusive).
- letter balance: per category, no answer letter may exceed (1 + slack) x a quarter of the category's
  kept questions; the excess of an over-used letter is dropped, repeatedly until that holds (a model
  must not learn "the answer is usually A"). Which ones go is decided by a hash of the question, not by
  video order.
Pure functions; the blind call itself is the pipeline's.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter, defaultdict

from lvr_trainer.data.build.questions import Draft, Drop, response_format, strip_fence
from lvr_trainer.data.schema import LETTERS

# Drop reasons in report order, each with what it means and what to do about it.
DROP_REASONS: dict[str, str] = {
    "call_failed": "a call failed after its retries (timeouts, 429, 5xx, or a request the server refused); "
                   "rerun the same command: finished calls are not repeated",
    "reply_unparseable": "a question reply (counted once, not per question) was not JSON, even after one repair",
    "reply_schema": "a question reply (counted once) did not have the schema's shape, even after one repair",
    "schema": "a question lacked a field, had a wrong type or an empty text",
    "answer": "the answer was not one of A-D, or two options had the same text",
    "duplicate": "the same question and options as another one of this video",
    "near_duplicate": "nearly the same words as another question of this video (--near-duplicate)",
    "blind_answerable": "answered correctly from the question alone, without the captions",
    "letter_imbalance": "its answer letter was over-used in its category (--letter-slack)",
}
BLIND_MAX_TOKENS = 64
BLIND_SYSTEM = ("Answer the multiple-choice question about a video you cannot see. Pick the most likely "
                'option anyway. Reply with JSON only: {"answer": "A"} (one of A, B, C, D).')
BLIND_SCHEMA: dict = {"type": "object", "additionalProperties": False, "required": ["answer"],
                      "properties": {"answer": {"type": "string", "enum": list(LETTERS)}}}


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


def _words(d: Draft) -> set[str]:
    return set(normalise(d.question + " " + " ".join(d.options.values())).split())


def dedupe(drafts: list[Draft], near_threshold: float) -> tuple[list[Draft], list[Drop]]:
    """Drop exact and near duplicates among one video's drafts (first kept). O(n^2) in the video's
    questions, which are a few dozen."""
    kept: list[Draft] = []
    drops: list[Drop] = []
    seen: dict[tuple, Draft] = {}
    for d in drafts:
        key = (normalise(d.question), tuple(sorted(normalise(o) for o in d.options.values())))
        if key in seen:
            drops.append(Drop("duplicate", f"same as {seen[key].question[:80]!r}", d.video_id, d.category,
                              d.question))
            continue
        words = _words(d)
        near = next((k for k in kept if _jaccard(words, _words(k)) >= near_threshold), None)
        if near is not None:
            drops.append(Drop("near_duplicate", f"close to {near.question[:80]!r}", d.video_id, d.category,
                              d.question))
            continue
        seen[key] = d
        kept.append(d)
    return kept, drops


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def blind_request(model: str, d: Draft, mode: str) -> dict:
    """The text-only request: the question and options, no captions."""
    options = "\n".join(f"{k}. {d.options[k]}" for k in LETTERS)
    body = {"model": model, "temperature": 0.0, "max_tokens": BLIND_MAX_TOKENS,
            "messages": [{"role": "system", "content": BLIND_SYSTEM},
                         {"role": "user", "content": f"{d.question}\n{options}"}]}
    fmt = response_format(mode, "blind_answer", BLIND_SCHEMA)
    return {**body, "response_format": fmt} if fmt else body


def parse_blind(content: str) -> str | None:
    """The letter a blind reply chose, or None when it names no single letter."""
    try:
        raw = json.loads(strip_fence(content))
        letter = raw.get("answer") if isinstance(raw, dict) else None
    except json.JSONDecodeError:
        letter = content.strip().strip(".").strip()
    return letter if letter in LETTERS else None


def _order_key(d: Draft) -> str:
    return hashlib.sha256(f"{d.video_id}\x00{d.category}\x00{d.question}".encode()).hexdigest()


def letter_cap(n: int, slack: float) -> int:
    """The most questions one letter may answer among `n` of a category (at least 1)."""
    return max(1, math.ceil((1 + slack) * n / len(LETTERS)))


def balance_letters(drafts: list[Draft], slack: float) -> tuple[list[Draft], list[Drop]]:
    """Per category, drop the excess of over-used answer letters until no letter is above its cap.
    The kept questions stay in their input order."""
    by_cat: dict[str, list[Draft]] = defaultdict(list)
    for d in drafts:
        by_cat[d.category].append(d)
    dropped: set[int] = set()
    drops: list[Drop] = []
    for category, items in by_cat.items():
        keep = sorted(items, key=_order_key)
        while True:
            cap = letter_cap(len(keep), slack)
            counts = Counter(d.answer for d in keep)
            if max(counts.values(), default=0) <= cap:
                break
            seen: Counter = Counter()
            nxt = []
            for d in keep:
                seen[d.answer] += 1
                if seen[d.answer] <= cap:
                    nxt.append(d)
                    continue
                detail = f"answer {d.answer} on {counts[d.answer]} of {len(keep)} {category} questions (cap {cap})"
                drops.append(Drop("letter_imbalance", detail, d.video_id, category, d.question))
                dropped.add(id(d))
            keep = nxt
    return [d for d in drafts if id(d) not in dropped], drops
