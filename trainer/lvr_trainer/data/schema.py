"""The LongVideo-Reason record: one multiple-choice question about one video, stored as JSONL."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from lvr_trainer.config import StrictModel
from lvr_trainer.data.location import join_location

LETTERS: tuple[str, ...] = ("A", "B", "C", "D")
CATEGORIES: tuple[str, ...] = ("temporal", "goal", "spatial", "plot", "other")

Letter = Literal["A", "B", "C", "D"]
Category = Literal["temporal", "goal", "spatial", "plot", "other"]


class VideoQARecord(StrictModel):
    """A 4-option question whose answer needs the whole video."""

    id: str = Field(..., min_length=1, description="Unique id of the question.")
    video: str = Field(
        ..., min_length=1,
        description="Local path or s3://bucket/key; relative paths resolve against the JSONL's directory "
                    "(local or s3://), or against a video root when one is given.")
    question: str = Field(..., min_length=1, description="The question text, without the options.")
    options: dict[Letter, str] = Field(..., description="Exactly the four options A, B, C and D.")
    answer: Letter = Field(..., description="The correct option letter.")
    reasoning: str = Field("", description="Chain-of-thought that leads to the answer (SFT target).")
    category: Category = Field(..., description="temporal, goal, spatial, plot or other.")
    duration: float = Field(..., gt=0, description="Video length in seconds.")
    meta: dict[str, Any] = Field(default_factory=dict, description="Free-form provenance.")

    @model_validator(mode="after")
    def _complete_options(self) -> VideoQARecord:
        missing = [k for k in LETTERS if k not in self.options]
        if missing:
            raise ValueError(f"options must have all of A, B, C, D; missing {', '.join(missing)}")
        if any(not text.strip() for text in self.options.values()):
            raise ValueError("every option needs a non-empty text")
        return self

    def is_remote(self) -> bool:
        return self.video.startswith("s3://")

    def video_path(self, base_dir: str | Path) -> str:
        """The video's location: s3:// URIs and absolute paths as they are, relative paths resolved
        against `base_dir`, a local directory or an s3:// prefix."""
        if self.is_remote() or Path(self.video).is_absolute():
            return self.video
        return join_location(str(base_dir), self.video)


@dataclass(frozen=True)
class RowError:
    """Why one JSONL line could not be used. `kind` is a stable key for counting."""

    line: int
    kind: str
    message: str
    id: str | None = None


def _schema_error(line: int, raw: dict, err: ValidationError) -> RowError:
    parts = []
    kind = "schema"
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(row)"
        if e["loc"][:1] == ("answer",):
            kind = "answer"  # the answer is not one of the option letters
        parts.append(f"field '{field}': {e['msg']}")
    rid = raw.get("id") if isinstance(raw.get("id"), str) else None
    return RowError(line, kind, "; ".join(parts), rid)


def parse_row(line_no: int, text: str) -> VideoQARecord | RowError:
    """Parse one JSONL line; never raises for bad input."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        return RowError(line_no, "json", f"not valid JSON ({err.msg} at column {err.colno})")
    if not isinstance(raw, dict):
        return RowError(line_no, "json", f"expected a JSON object, got {type(raw).__name__}")
    try:
        return VideoQARecord.model_validate(raw)
    except ValidationError as err:
        return _schema_error(line_no, raw, err)


def iter_rows(path: str | Path) -> Iterator[tuple[int, VideoQARecord | RowError]]:
    """(1-based line number, parsed record or its error) for every non-blank line of a JSONL file."""
    with open(path, encoding="utf-8") as fh:
        for line_no, text in enumerate(fh, start=1):
            if text.strip():
                yield line_no, parse_row(line_no, text)


def read_records(path: str | Path) -> tuple[list[VideoQARecord], list[RowError]]:
    """All good records and all row errors of a JSONL file."""
    good: list[VideoQARecord] = []
    bad: list[RowError] = []
    for _, row in iter_rows(path):
        (bad if isinstance(row, RowError) else good).append(row)
    return good, bad


def write_records(path: str | Path, records: Iterable[VideoQARecord]) -> int:
    """Write records as JSONL (one object per line, stable key order); returns the count."""
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record.model_dump(mode="json"), ensure_ascii=False) + "\n")
            n += 1
    return n
