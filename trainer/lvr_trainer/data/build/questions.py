"""Stage 3: questions with reasoning, per category, from an LLM that reads the whole caption sequence.

The paper's four categories (LongVILA-R1, Sec. 3: temporal, goal and purpose, spatial, plot and
narrative) each get one request per video. The reply is asked for as a JSON schema (`response_format`
json_schema, structured output where the server supports it; the schema is also spelled out in the
prompt for servers that do not) and parsed strictly: valid JSON, exactly the schema's fields and types,
non-empty texts, four distinct options. A reply with any problem gets one repair request (the reply and
its problems sent back); after that, the usable questions are kept and the rest dropped with a reason.
Pure functions: prompts in, requests out; reply text in, drafts and drops out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from pydantic import ConfigDict, ValidationError

from lvr_trainer.config import StrictModel
from lvr_trainer.data.schema import LETTERS

QUESTION_MAX_TOKENS = 4096
QUESTION_TEMPERATURE = 0.7  # some variety between categories and videos
MAX_PROBLEMS_SHOWN = 6      # problems quoted back in a repair request

CATEGORY_GUIDES: dict[str, str] = {
    "temporal": "Temporal reasoning: the order, timing and duration of events; what happened before or "
                "after what; how things changed over time.",
    "goal": "Goal and purpose reasoning: why people act as they do and what they are trying to achieve, "
            "inferred from their actions across the video.",
    "spatial": "Spatial reasoning: where people and objects are, how they move, and how their positions "
               "relate to each other, tracked across the video.",
    "plot": "Plot and narrative reasoning: the story as a whole; causes and consequences, turning points, "
            "and how earlier events explain later ones.",
}
STRUCTURED_MODES = ("json_schema", "json_object", "none")

QUESTIONS_SCHEMA: dict = {
    "type": "object", "additionalProperties": False, "required": ["questions"],
    "properties": {"questions": {"type": "array", "items": {
        "type": "object", "additionalProperties": False,
        "required": ["question", "options", "answer", "reasoning"],
        "properties": {
            "question": {"type": "string"},
            "options": {"type": "object", "additionalProperties": False, "required": list(LETTERS),
                        "properties": {k: {"type": "string"} for k in LETTERS}},
            "answer": {"type": "string", "enum": list(LETTERS)},
            "reasoning": {"type": "string"}}}}}}

QUESTION_SYSTEM = (
    "You write multiple-choice questions that train models to reason over long videos. You see a video as "
    "time-stamped captions of its consecutive clips. Every question must need facts from several moments "
    "of the video, far apart in time: not answerable from one clip, nor from common sense without the "
    "video. Ask about the video itself; never mention captions or clips. Give four options A, B, C, D with "
    "exactly one correct; make the wrong ones plausible, drawn from things in the video. Spread the correct "
    "answers over the four letters. The reasoning is a step-by-step chain of thought that cites the times "
    "of the moments it uses and ends with the correct letter.\nReply with one JSON object only, of this "
    'form: {"questions": [{"question": "...", "options": {"A": "...", "B": "...", "C": "...", "D": "..."}, '
    '"answer": "A", "reasoning": "..."}]}')


class _Options(StrictModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    A: str
    B: str
    C: str
    D: str


class _Item(StrictModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    question: str
    options: _Options
    answer: Literal["A", "B", "C", "D"]
    reasoning: str


@dataclass(frozen=True)
class Draft:
    """A question that passed parsing; `video_id` and `category` say where it came from."""

    video_id: str
    category: str
    question: str
    options: dict[str, str]
    answer: str
    reasoning: str


@dataclass(frozen=True)
class Drop:
    """A dropped item: `reason` is a key of filters.DROP_REASONS; `detail` says what exactly."""

    reason: str
    detail: str
    video_id: str = ""
    category: str = ""
    question: str = ""


@dataclass
class Parsed:
    """One reply, parsed. `failure`: the reply as a whole is unusable (reply_unparseable, reply_schema);
    `problems`: everything wrong with it, for a repair request (empty when the reply is perfect)."""

    drafts: list[Draft] = field(default_factory=list)
    drops: list[Drop] = field(default_factory=list)
    failure: str | None = None
    problems: list[str] = field(default_factory=list)


def response_format(mode: str, name: str, schema: dict) -> dict | None:
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}
    return {"type": "json_object"} if mode == "json_object" else None


def question_request(model: str, captions_text: str, duration: str, category: str, n: int, mode: str) -> dict:
    """The chat request for `n` questions of `category` about one video."""
    user = (f"Video length: {duration}.\nCaptions:\n{captions_text}\n\nCategory: {category}. "
            f"{CATEGORY_GUIDES[category]}\nWrite {n} question{'s' if n != 1 else ''} in this category.")
    body = {"model": model, "temperature": QUESTION_TEMPERATURE, "max_tokens": QUESTION_MAX_TOKENS,
            "messages": [{"role": "system", "content": QUESTION_SYSTEM}, {"role": "user", "content": user}]}
    fmt = response_format(mode, "video_questions", QUESTIONS_SCHEMA)
    return {**body, "response_format": fmt} if fmt else body


def repair_request(original: dict, bad_reply: str, problems: list[str]) -> dict:
    """The original conversation, the unusable reply, and what was wrong with it: one chance to fix it."""
    shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN]) + ("; ..." if len(problems) > MAX_PROBLEMS_SHOWN else "")
    fix = (f"That reply cannot be used: {shown}. Reply again with only the corrected JSON object, exactly in "
           "the form asked for, with no other text.")
    messages = [*original["messages"], {"role": "assistant", "content": bad_reply}, {"role": "user", "content": fix}]
    return {**original, "messages": messages}


def strip_fence(text: str) -> str:
    """The JSON inside one surrounding ``` or ```json fence (a habit of models without structured output)."""
    t = text.strip()
    if t.startswith("```") and t.endswith("```") and len(t) >= 6:
        t = t[3:-3]
        t = t[4:] if t.startswith("json") else t
    return t.strip()


def parse_questions(content: str, video_id: str, category: str) -> Parsed:
    """Strict parse of a question reply; never raises."""
    try:
        raw = json.loads(strip_fence(content))
    except json.JSONDecodeError as err:
        msg = f"not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
        return Parsed(failure="reply_unparseable", problems=[msg])
    if not isinstance(raw, dict) or not isinstance(raw.get("questions"), list):
        got = type(raw).__name__ if not isinstance(raw, dict) else f"keys {sorted(raw)}"
        return Parsed(failure="reply_schema", problems=[f'expected an object {{"questions": [...]}}, got {got}'])
    out = Parsed()
    extra = sorted(set(raw) - {"questions"})
    if extra:
        out.problems.append(f"unknown top-level keys {extra}")
    if not raw["questions"]:
        out.failure = "reply_schema"
        out.problems.append("the questions list is empty")
    for i, item in enumerate(raw["questions"]):
        result = _parse_item(item, i, video_id, category)
        if isinstance(result, Draft):
            out.drafts.append(result)
        else:
            out.drops.append(result)
            out.problems.append(result.detail)
    return out


def _parse_item(item, i: int, video_id: str, category: str) -> Draft | Drop:
    text = item.get("question", "") if isinstance(item, dict) else ""
    where = f"questions[{i}]"

    def drop(reason: str, detail: str) -> Drop:
        return Drop(reason, detail, video_id, category, str(text)[:200])

    try:
        it = _Item.model_validate(item)
    except ValidationError as err:
        fields = [".".join(str(p) for p in e["loc"]) for e in err.errors()]
        msgs = [f"{where}{'.' + f if f else ''}: {e['msg']}" for f, e in zip(fields, err.errors())]
        reason = "answer" if all(f == "answer" for f in fields) else "schema"
        return drop(reason, "; ".join(msgs))
    options = {k: " ".join(getattr(it.options, k).split()) for k in LETTERS}
    question, reasoning = " ".join(it.question.split()), it.reasoning.strip()
    empty = [name for name, v in (("question", question), ("reasoning", reasoning), *options.items()) if not v]
    if empty:
        return drop("schema", f"{where}: empty text in {', '.join(empty)}")
    if len({v.casefold() for v in options.values()}) < len(LETTERS):
        return drop("answer", f"{where}: two options have the same text, so the answer is ambiguous")
    return Draft(video_id, category, question, options, it.answer, reasoning)
