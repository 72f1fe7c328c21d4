"""Plan, actions and condition helpers shared by the job and dataset reconcilers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any


def rfc3339(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str | None) -> datetime | None:
    if not s:
        return None
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Create:
    """Create `obj` unless an object of its kind and name exists (an AlreadyExists answer is success when
    this owner controls it; `replace`: then its content is replaced by `obj`'s)."""

    obj: dict[str, Any]
    replace: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return self.obj["kind"], self.obj["metadata"]["name"]


@dataclass(frozen=True)
class Delete:
    """Delete a child by kind and name (NotFound is success)."""

    kind: str
    name: str


@dataclass(frozen=True)
class DeleteOwner:
    """Delete the custom resource itself (ttlSecondsAfterFinished)."""


@dataclass(frozen=True)
class CreateFailure:
    """A child the API server would not create: refused (403/422/400: quota, Pod Security, an invalid
    field) or taken (409 by an object this owner does not control)."""

    kind: str
    name: str
    status: int                 # the API server's HTTP status
    message: str                # its own words
    field: str | None = None    # the field it named, when it named one
    conflict: bool = False      # an object of that name exists under another controller

    def describe(self) -> str:
        if self.conflict:
            return (f"{self.kind} '{self.name}' already exists and {self.message}; it is not adopted. Delete or "
                    "rename that object, or recreate this resource under another name")
        where = f" (field {self.field})" if self.field else ""
        return f"the API server refused to create {self.kind} '{self.name}'{where}: {self.status} {self.message}"


@dataclass(frozen=True)
class Event:
    type: str      # Normal | Warning
    reason: str
    message: str


@dataclass
class Plan:
    status: dict[str, Any]
    actions: list[Create | Delete | DeleteOwner] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    waiting: str | None = None       # set while waiting on something outside the operator's control
    invalid: str | None = None       # set when the spec cannot work until the user changes it

    def requeue(self, seconds: float) -> None:
        seconds = max(float(seconds), 0.5)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


def status_patch(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any] | None:
    """A JSON merge patch turning `old` into `new` at the top level of status (None: nothing changed)."""
    old = old or {}
    patch = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new})
    return patch or None


MAX_MESSAGE = 4096      # characters of a status message or condition message (a log tail can be long)


def bounded(message: str) -> str:
    """`message`, cut to MAX_MESSAGE characters keeping its start and its end (a log's last lines)."""
    if len(message) <= MAX_MESSAGE:
        return message
    cut = " [...] "
    head = MAX_MESSAGE // 4
    return message[:head] + cut + message[-(MAX_MESSAGE - head - len(cut)):]


def set_condition(conditions: list[dict[str, Any]], type_: str, status: bool | str, reason: str, message: str,
                  now: datetime, generation: int | None) -> list[dict[str, Any]]:
    """Upsert a condition; lastTransitionTime moves only when its status flips."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    message = bounded(message or reason)          # the apiserver rejected empty messages in merge patches
    out, found = [], False
    for c in conditions:
        if c.get("type") == type_:
            found = True
            moved = c.get("status") != value
            c = {"type": type_, "status": value, "reason": reason, "message": message,
                 "lastTransitionTime": rfc3339(now) if moved else c.get("lastTransitionTime", rfc3339(now)),
                 "observedGeneration": generation}
        out.append(c)
    if not found:
        out.append({"type": type_, "status": value, "reason": reason, "message": message,
                    "lastTransitionTime": rfc3339(now), "observedGeneration": generation})
    return out


def condition(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def json_or_none(text: str | None) -> dict[str, Any] | None:
    """The JSON object at the start of `text` (a report may be followed by log lines), else None."""
    if not text:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text.strip())
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def tail(text: str | None, lines: int) -> str:
    return "\n".join((text or "").rstrip().splitlines()[-lines:])
