"""What a resource's status says after the API server would not create one of its children (pure).

A refusal the spec causes (422: an invalid field) fails the resource as InvalidSpec until the spec changes;
a forbidden create (403: a quota, Pod Security admission, an unknown PriorityClass) and a name held by
another controller's object are waited on, with the API server's words in the status. Either way the
pods of a partly created gang are deleted: no worker waits at a rendezvous its peers never reach.
"""

from __future__ import annotations

from datetime import datetime
from types import SimpleNamespace
from typing import Any

from lvr_operator.api.kinds import kind_by_name
from lvr_operator.api.phases import ConditionType as C
from lvr_operator.api.phases import DatasetPhase as D
from lvr_operator.api.phases import JobPhase as P
from lvr_operator.api.phases import Reason as R
from lvr_operator.reconcile.context import Ctx
from lvr_operator.reconcile.model import CreateFailure, Delete, Plan
from lvr_operator.settings import OperatorSettings

RETRY_SECONDS = 30


def after_create_failure(obj: dict[str, Any], failure: CreateFailure, pods: list[str], now: datetime,
                         settings: OperatorSettings) -> Plan:
    """The follow-up plan: `obj` carries the status the failed apply wrote; `pods` are the resource's pods
    that exist now (created before the failure, or earlier), all deleted."""
    ctx = Ctx(obj, SimpleNamespace(now=now), settings)
    ctx.plan.actions += [Delete("Pod", name) for name in sorted(set(pods))]
    message = failure.describe() + (f"; the {len(set(pods))} pod(s) already created were deleted" if pods else "")
    reason = R.CHILD_CONFLICT if failure.conflict else R.CREATE_REFUSED
    job = kind_by_name(obj["kind"]).is_job
    if failure.status == 422 and not failure.conflict:
        if job:
            ctx.set(C.created, False, reason, message)
            ctx.invalid(message)
        else:
            ctx.set(C.invalid_spec, True, reason, message)
            ctx.set(C.ready, False, reason, message)
            ctx.phase(D.failed, reason, message)
            ctx.plan.invalid = message
        return ctx.finish()
    ctx.set(C.created if job else C.ready, False, reason, message + f"; retrying every {RETRY_SECONDS}s")
    if job:
        ctx.status["workers"] = 0
        ctx.status.pop("startTime", None)
    ctx.phase(P.pending if job else D.pending, reason, message)
    ctx.plan.waiting = message
    ctx.plan.requeue(RETRY_SECONDS)
    return ctx.finish()
