"""Reading a model's reply: the `<think>`/`<answer>` tags and the option letter inside the answer.

One implementation, used by the mc accuracy reward (`rewards.accuracy_reward`) and by `lvr eval`'s strict
and lenient scorers (`eval.scoring`), so training and evaluation can never disagree about what a reply
answered. Pure standard library.

Rules (tags are matched exactly, lowercase, as the SFT target writes them):
- An answer span is the text between `<answer>` and the next `</answer>`; when `<answer>` is opened twice
  before a close, the inner (later) opening counts. An unclosed `<answer>` (a reply cut by
  `max_new_tokens`) is no span.
- The *last* span of a reply is the answer (models that revise themselves end with their final choice).
- Inside a span, `parse_choice` accepts, case-insensitively and ignoring surrounding whitespace:
  `B`, `(B)`, `[B]`, `B.`, `B)`, `B:`, `B) text`, `B. text`, `B: text`, `Option B`, `Option (B): text`,
  `Answer: B`, `Choice B`, `Option B is right`, and any of these in markdown emphasis (`**B**`).
  A bare letter followed by a space and more text (`A man walks`) is *not* a choice: it reads as a word;
  after a cue word (`Option B is right`) it is when it is a capital letter.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

DEFAULT_LETTERS: tuple[str, ...] = ("A", "B", "C", "D")

_SPAN = re.compile(r"<answer>((?:(?!<answer>).)*?)</answer>", re.DOTALL)
# Whole reply: <think>…</think>, optional whitespace, <answer>…</answer>; no nested or repeated tags.
_NO_TAG = r"(?:(?!</?(?:think|answer)>).)"
_FORMAT = re.compile(rf"<think>{_NO_TAG}*</think>\s*<answer>({_NO_TAG}*)</answer>", re.DOTALL)
_CUE = r"(?:option|answer|choice)\s*(?:is\s+)?[:\-]?\s*"


def _choice_patterns(letters: Sequence[str]) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """(bare, cued): a letter on its own, and one after a cue word such as `Option`."""
    cls = "[" + "".join(re.escape(x) for x in letters) + "]"
    wrapped = rf"\((?P<p>{cls})\)|\[(?P<b>{cls})\]"
    bare = re.compile(rf"^(?:{wrapped}|(?P<l>{cls})(?=$|[.):]))", re.IGNORECASE)
    # After a cue the letter may be followed by more words if it is a capital (`Option B is the one`);
    # a lowercase one there is a word (`the answer is a dog`).
    cued = re.compile(rf"^{_CUE}(?:{wrapped}|(?P<l>{cls})(?=$|[.):,])|(?-i:(?P<u>{cls}))(?=\s))",
                      re.IGNORECASE)
    return bare, cued


_PATTERNS: dict[tuple[str, ...], tuple[re.Pattern[str], re.Pattern[str]]] = {}


def _patterns(letters: Sequence[str]) -> tuple[re.Pattern[str], re.Pattern[str]]:
    key = tuple(x.upper() for x in letters)
    if key not in _PATTERNS:
        _PATTERNS[key] = _choice_patterns(key)
    return _PATTERNS[key]


def answer_spans(text: str) -> list[str]:
    """Contents of every closed `<answer>…</answer>` span of `text`, in order (unstripped)."""
    return _SPAN.findall(text)


def last_answer_span(text: str) -> str | None:
    """Contents of the last closed answer span, or None when the reply has none."""
    spans = answer_spans(text)
    return spans[-1] if spans else None


def is_well_formatted(text: str) -> bool:
    """True when the whole reply (outer whitespace ignored) is `<think>…</think>` + ws + `<answer>…</answer>`.

    The think part may be empty; the answer part must hold something other than whitespace; neither may
    contain another `<think>`/`<answer>` tag, and nothing may precede or follow the two blocks.
    """
    m = _FORMAT.fullmatch(text.strip())
    return bool(m and m.group(1).strip())


def parse_choice(span: str, letters: Sequence[str] = DEFAULT_LETTERS) -> str | None:
    """The option letter (uppercase) that an answer span's content states, or None (rules: module doc)."""
    body = span.strip()
    while len(body) >= 2 and body[0] in "*_" and body[-1] == body[0]:  # **B**, _B_
        body = body[1:-1].strip()
    bare, cued = _patterns(letters)
    m = bare.match(body) or cued.match(body)
    if m is None:
        return None
    return next(g for g in m.groups() if g).upper()


def extract_choice(text: str, letters: Sequence[str] = DEFAULT_LETTERS) -> str | None:
    """The letter in the *last* answer span of a whole reply; None without a span or a readable letter."""
    span = last_answer_span(text)
    return None if span is None else parse_choice(span, letters)


_CUE_WORD = re.compile(r"\b(?:option|answer|choice)\b", re.IGNORECASE)


def _standalone(letters: Sequence[str]) -> re.Pattern[str]:
    cls = "[" + "".join(re.escape(x) for x in letters) + "]"
    return re.compile(rf"(?<![A-Za-z0-9])(?:\((?i:{cls})\)|\[(?i:{cls})\]|{cls})(?![A-Za-z0-9])")


def find_choice_lenient(text: str, letters: Sequence[str] = DEFAULT_LETTERS) -> str | None:
    """A letter found anywhere in a reply, for the lenient scorer; the first rule that reads one wins.

    1. the strict reading: `extract_choice` (so lenient is correct whenever strict is);
    2. the last cue phrase anywhere (`the answer is C`, `Option (c)`, `answer: C.`), read by `parse_choice`;
    3. a choice at the very start of the reply (`B. The man ...`, `(b) because ...`);
    4. the last standalone capital letter: not touching other letters or digits (the `A` of `Apple`, `CD`
       or `B2` does not count), and not the article `A` (an `A` followed by a space and a lowercase
       letter); `(b)` and `[b]` count in either case, a bare lowercase letter never does.
    """
    letters = tuple(x.upper() for x in letters)
    found = extract_choice(text, letters)
    if found is not None:
        return found
    for cue in reversed(list(_CUE_WORD.finditer(text))):
        found = parse_choice(text[cue.start():], letters)
        if found is not None:
            return found
    found = parse_choice(text, letters)
    if found is not None:
        return found
    for m in reversed(list(_standalone(letters).finditer(text))):
        token = m.group(0)
        if token == "A" and re.match(r"\s+[a-z]", text[m.end():]):
            continue  # the article: "A man walks"
        return token.strip("()[]").upper()
    return None
