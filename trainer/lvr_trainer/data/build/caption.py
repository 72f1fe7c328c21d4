"""Stage 2: one caption per clip from a VLM, in the OpenAI chat format with images as data URLs.

The paper's pipeline captions short clips first, so that a text-only LLM can later reason over the
whole video as a time-stamped caption sequence. The prompt asks for what happens, who and what is
where, and what changes: what the question writer will need for its four categories. Pure functions;
the call itself is the pipeline's.
"""

from __future__ import annotations

from dataclasses import dataclass

CAPTION_MAX_TOKENS = 300
CAPTION_TEMPERATURE = 0.2  # low: a caption is a description, not a story
MIN_CAPTION_CHARS = 3

CAPTION_SYSTEM = (
    "You describe short video clips for a dataset of questions about long videos. Be factual and "
    "specific: name the people, objects and places, where things are in the frame, what each one does, "
    "and what changes from frame to frame. Do not guess at what you cannot see.")


@dataclass(frozen=True)
class Caption:
    index: int
    start: float
    end: float
    text: str


def caption_request(model: str, index: int, total: int, start: float, end: float, images: list[str]) -> dict:
    """The chat request for clip `index` (0-based) of `total`, from `start` to `end` seconds."""
    text = (f"These {len(images)} frames are in time order, from clip {index + 1} of {total} of a video "
            f"({fmt_time(start)} to {fmt_time(end)}). Describe the clip in 2 to 4 sentences.")
    content = [{"type": "text", "text": text}]
    content += [{"type": "image_url", "image_url": {"url": url}} for url in images]
    return {"model": model, "temperature": CAPTION_TEMPERATURE, "max_tokens": CAPTION_MAX_TOKENS,
            "messages": [{"role": "system", "content": CAPTION_SYSTEM}, {"role": "user", "content": content}]}


def parse_caption(content: str) -> str | None:
    """The caption text, whitespace collapsed; None when the reply is (nearly) empty."""
    text = " ".join(content.split())
    return text if len(text) >= MIN_CAPTION_CHARS else None


def fmt_time(seconds: float) -> str:
    """`75.5` -> `1:15.5`, `3725` -> `1:02:05`: how captions are stamped for the question writer."""
    tenths = round(seconds * 10)
    whole, frac = divmod(tenths, 10)
    frac = f".{frac}" if frac else ""
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}{frac}" if h else f"{m}:{s:02d}{frac}"


def caption_sequence(captions: list[Caption]) -> str:
    """`[0:00-0:10] text` lines in time order: the whole video as the question writer sees it."""
    return "\n".join(f"[{fmt_time(c.start)}-{fmt_time(c.end)}] {c.text}"
                     for c in sorted(captions, key=lambda c: c.index))
