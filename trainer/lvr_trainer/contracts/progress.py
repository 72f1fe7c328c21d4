"""The progress annotation: rank 0 of a trainer writes it on its own pod (`train.pod_progress`), the operator
mirrors it into the job's status.progress (`lvr_operator.reconcile.job_steps`). One schema for both ends:
snake_case keys, finite numbers, bounded sizes."""

from __future__ import annotations

import json
from typing import Any

from pydantic import AliasGenerator, BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

DEFAULT_ANNOTATION = "longvideo.dev/progress"
MAX_REPORT_CHARS = 4096     # a longer annotation is not read at all
MAX_TEXT = 1024             # a URI or digest longer than this is left out


class ProgressReport(BaseModel):
    """The progress annotation's JSON object. Serialised by alias (camelCase), it is the job's
    status.progress fields of the same names."""

    model_config = ConfigDict(extra="ignore", strict=True,
                              alias_generator=AliasGenerator(serialization_alias=to_camel))

    step: int | None = Field(None, ge=0, description="Optimizer steps done.")
    total_steps: int | None = Field(None, ge=0, description="Optimizer steps in the run.")
    loss: float | None = Field(None, allow_inf_nan=False, description="Last logged training loss.")
    reward: float | None = Field(None, allow_inf_nan=False, description="Mean reward of the last logged step.")
    accuracy: float | None = Field(None, allow_inf_nan=False, description="Last evaluation or rollout accuracy.")
    last_checkpoint: str | None = Field(None, max_length=MAX_TEXT, description="URI of the newest checkpoint.")
    initial_weights: str | None = Field(None, max_length=128, description="sha256 of the starting weights.")
    updated_at: str | None = Field(None, max_length=40, description="When rank 0 reported (RFC 3339).")

    def status_fields(self) -> dict[str, Any]:
        """The fields that are set, under their status.progress names."""
        return self.model_dump(by_alias=True, exclude_none=True)


def clean_report(raw: dict[str, Any]) -> tuple[ProgressReport, int]:
    """(the report made of the fields of `raw` that fit the schema, how many set fields were dropped): a
    NaN or infinite number, a value of the wrong type or out of bounds, an over-long text."""
    kept, dropped = {}, 0
    for name in ProgressReport.model_fields:
        if raw.get(name) is None:
            continue
        try:
            ProgressReport.model_validate({name: raw[name]})
            kept[name] = raw[name]
        except ValidationError:
            dropped += 1
    return ProgressReport.model_validate(kept), dropped


def parse_report(text: str | None) -> tuple[ProgressReport | None, int]:
    """(report, fields dropped) from an annotation's text; (None, 1) for text too long or not a JSON
    object, (None, 0) for none."""
    if not text:
        return None, 0
    if len(text) > MAX_REPORT_CHARS:
        return None, 1
    try:
        raw, _ = json.JSONDecoder().raw_decode(text.strip())
    except ValueError:
        return None, 1
    if not isinstance(raw, dict):
        return None, 1
    return clean_report(raw)
