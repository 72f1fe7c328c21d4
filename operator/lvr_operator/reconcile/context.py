"""Ctx: the status being computed for one custom resource, with the helpers every step uses."""

from __future__ import annotations

import copy
import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from lvr_operator.api.phases import JOB_TERMINAL
from lvr_operator.api.phases import ConditionType as C
from lvr_operator.api.phases import JobPhase as P
from lvr_operator.api.phases import Reason as R
from lvr_operator.manifests.common import meta, namespace_of
from lvr_operator.reconcile.model import Event, Plan, bounded, condition, rfc3339, set_condition
from lvr_operator.settings import OperatorSettings

_WARNING_PHASES = {P.failed.value, P.restarting.value, "Failed"}


class Ctx:
    def __init__(self, obj: dict[str, Any], obs: Any, settings: OperatorSettings):
        self.job, self.obs, self.settings = obj, obs, settings
        self.name, self.ns = meta(obj)["name"], namespace_of(obj)
        self.generation = meta(obj).get("generation")
        self.old_status: dict[str, Any] = copy.deepcopy(obj.get("status") or {})
        self.status: dict[str, Any] = copy.deepcopy(self.old_status)
        self.status.setdefault("phase", P.pending.value)
        self.status.setdefault("conditions", [])
        self.old_phase: str = self.status["phase"]
        self.plan = Plan(status={})
        self._evented = False

    def has(self, type_: C) -> bool:
        return condition(self.status["conditions"], type_.value) is not None

    def set(self, type_: C, value: bool, reason: str, message: str) -> None:
        self.status["conditions"] = set_condition(self.status["conditions"], type_.value, value, reason, message,
                                                  self.obs.now, self.generation)

    def phase(self, new: Any, reason: str, message: str, force_event: bool = False) -> None:
        """Move to phase `new`; an Event is posted on every transition (or when forced)."""
        value = getattr(new, "value", new)
        self.status["phase"] = value
        self.status["message"] = bounded(message)
        if (value != self.old_phase or force_event) and not self._evented:
            kind = "Warning" if value in _WARNING_PHASES else "Normal"
            self.plan.events.append(Event(kind, reason, message))
            self._evented = True

    def fail(self, reason: str, message: str) -> None:
        self.status["completionTime"] = rfc3339(self.obs.now)
        self.status["workers"] = 0
        self.status.pop("nextRestartTime", None)
        self.set(C.failed, True, reason, message)
        if self.has(C.running):
            self.set(C.running, False, reason, message)
        self.phase(P.failed, reason, message)

    def invalid(self, message: str) -> None:
        """Schema-valid but unusable: InvalidSpec condition, phase Failed until the spec changes."""
        self.set(C.invalid_spec, True, R.INVALID_SPEC, message)
        self.fail(R.INVALID_SPEC, message)
        self.plan.invalid = message
        return None

    def wait(self, reason: str, message: str, invalid: bool = False) -> None:
        """Waiting for something outside the job (a dependency); looked at again in a while."""
        if invalid:
            self.set(C.invalid_spec, True, reason, message)
        self.set(C.dependencies_ready, False, reason, message)
        self.phase(P.waiting, reason, message)
        self.plan.waiting = message
        self.plan.requeue(10 if invalid else 5)
        return None

    def respec_after_invalid(self) -> bool:
        """A Failed-by-InvalidSpec job whose spec was edited since starts over."""
        c = condition(self.status["conditions"], C.invalid_spec.value)
        return (self.old_phase in {p.value for p in JOB_TERMINAL} and c is not None and c.get("status") == "True"
                and self.status.get("observedGeneration") != self.generation)

    def start_over(self) -> None:
        self.status = {"phase": P.pending.value, "restarts": 0, "conditions": []}
        self.old_phase = P.pending.value

    def finish(self) -> Plan:
        refused = condition(self.status["conditions"], C.status_update_refused.value)
        if refused is not None and refused.get("status") == "True":    # this status is the one that goes now
            self.set(C.status_update_refused, False, R.STATUS_UPDATE_ACCEPTED, "")
        self.status["observedGeneration"] = self.generation
        check_status(self.job.get("kind"), self.status)
        self.plan.status = self.status
        return self.plan


class StatusSchemaError(RuntimeError):
    """The operator built a status its own CRD schema (the typed status model) does not describe: a bug."""


def check_status(kind: str | None, status: dict[str, Any]) -> None:
    """Every status the operator writes passes its kind's typed model (`JobStatus`, `DatasetStatus`: the models
    the CRDs' status schemas are generated from), so a misspelt field or a wrong type fails here, in the tests,
    rather than being pruned or refused by the API server."""
    from lvr_operator.api.dataset import DatasetStatus
    from lvr_operator.api.jobs import JobStatus
    from lvr_operator.api.kinds import kind_by_name

    if kind is None:
        return
    model = JobStatus if kind_by_name(kind).is_job else DatasetStatus
    try:
        model.model_validate(status)
    except ValidationError as err:
        raise StatusSchemaError(f"{kind} status does not match {model.__name__}: {err}") from None


def explain_validation(err: ValidationError, model: type[BaseModel], prefix: str) -> str:
    """One line per problem, `spec.a.b: what (how to fix)`, with a close-match hint for unknown keys."""
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        where = ".".join([prefix, *loc])
        if e["type"] == "extra_forbidden":
            known = _aliases_at(model, loc[:-1])
            hint = difflib.get_close_matches(loc[-1], known, n=1)
            lines.append(f"{where}: unknown field" + (f"; did you mean '{hint[0]}'?" if hint else
                                                      f"; known: {', '.join(known)}"))
        elif e["type"] == "missing":
            lines.append(f"{where}: required field is missing")
        else:
            lines.append(f"{where}: {e['msg']}")
    return "; ".join(lines)


def _aliases_at(model: Any, path: list[str]) -> list[str]:
    for part in path:
        fields = getattr(model, "model_fields", {})
        field = next((f for n, f in fields.items() if part in (n, f.alias)), None)
        if field is None:
            return []
        model = field.annotation
        for arg in getattr(model, "__args__", ()):   # Optional[Model]
            if hasattr(arg, "model_fields"):
                model = arg
    return [f.alias or n for n, f in getattr(model, "model_fields", {}).items()]
