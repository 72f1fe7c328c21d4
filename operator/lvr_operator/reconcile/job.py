"""SFTJob / RLJob reconciliation: one pure function from (job, observed, now) to a Plan.

Order of checks, each a small step: spec valid -> finished (TTL) -> suspended -> dependencies ->
deadline -> stale pods of an older attempt -> a worker pod taken away (deleted, evicted, preempted: restart
at once, counted in status.preemptions) -> failed worker (gang restart with backoff, or Failed) ->
all succeeded -> backoff wait -> create the missing gang (only when every worker can be placed) ->
Created/Running, with progress mirrored from rank 0's pod annotation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lvr_operator.api.phases import ConditionType as C
from lvr_operator.api.phases import JobPhase as P
from lvr_operator.api.phases import Reason as R
from lvr_operator.api.phases import is_terminal
from lvr_operator.manifests.common import meta
from lvr_operator.reconcile.job_steps import (Ctx, attempt_of, check_dependencies, create_gang, handle_failure,
                                              handle_preemption, mirror_progress, note_config_change, parse_job)
from lvr_operator.reconcile.model import Delete, DeleteOwner, Plan, parse_time, rfc3339
from lvr_operator.reconcile.pods import worker
from lvr_operator.settings import OperatorSettings


@dataclass
class JobObserved:
    """What the handler read from the API before calling `reconcile_job`."""

    now: datetime
    pods: list[dict[str, Any]] = field(default_factory=list)          # this job's pods
    children: set[tuple[str, str]] | None = None                       # (kind, name) of other children;
    # None: not looked at (the gang is complete; they are listed again before any pod is created)
    dataset: dict[str, Any] | None = None
    sft_job: dict[str, Any] | None = None
    free_slots: int | None = None                                      # None: not gated
    gpu_holders: list[str] = field(default_factory=list)               # who holds GPUs (when gated)
    pod_groups: bool | None = None                                     # PodGroup API served; None: not asked
    logs: dict[str, str] = field(default_factory=dict)                 # failed pod -> log tail


def reconcile_job(job: dict[str, Any], obs: JobObserved, settings: OperatorSettings) -> Plan:
    ctx = Ctx(job, obs, settings)
    if ctx.respec_after_invalid():
        ctx.start_over()
    spec = parse_job(ctx)
    if spec is None:
        return ctx.finish()
    if is_terminal(ctx.old_phase):
        return _finished(ctx, spec)
    if spec.run_policy.suspend:
        return _suspend(ctx)
    if ctx.old_phase == P.suspended.value:
        ctx.status.pop("startTime", None)
        ctx.set(C.suspended, False, R.RESUMED, "resumed; the trainer continues from its last checkpoint")
    deps = check_dependencies(ctx, spec)
    if deps is None:
        return ctx.finish()
    if _deadline_passed(ctx, spec):
        return ctx.finish()
    workers = [worker(p) for p in obs.pods]
    attempt = attempt_of(ctx.status)
    stale = [w for w in workers if w.attempt != attempt]
    current = [w for w in workers if w.attempt == attempt]
    ctx.plan.actions += [Delete("Pod", w.name) for w in stale if not w.deleting]
    mirror_progress(ctx, current)
    if current:
        note_config_change(ctx, spec, deps)
    # before failures (a peer of a deleted pod fails because of it); only a live gang's pods count: after a
    # suspend, its own deletions are still finishing
    if any(w.preempted for w in current) and ctx.old_phase in (P.created.value, P.running.value):
        return handle_preemption(ctx, spec, current)
    if any(w.state == "failed" for w in current):
        return handle_failure(ctx, spec, current)
    if len(current) == spec.resources.nodes and all(w.state == "succeeded" for w in current):
        return _succeeded(ctx, current)
    if stale:
        ctx.plan.requeue(2)
        return ctx.finish()
    if _backing_off(ctx):
        return ctx.finish()
    if len(current) < spec.resources.nodes or _children_missing(ctx, spec):
        return create_gang(ctx, spec, deps, {w.rank for w in current})
    return _running(ctx, spec, current)


def _children_missing(ctx: Ctx, spec: Any) -> bool:
    children = ctx.obs.children        # ConfigMap, Service, ServiceAccount, Role, RoleBinding
    return children is not None and len(children) < 5


def _finished(ctx: Ctx, spec: Any) -> Plan:
    """Terminal: stop anything still running (a sidecar, a straggler); honour ttlSecondsAfterFinished."""
    for w in (worker(p) for p in ctx.obs.pods):
        if w.pod_active and not w.deleting:
            ctx.plan.actions.append(Delete("Pod", w.name))
    ttl = spec.run_policy.ttl_seconds_after_finished
    done = parse_time(ctx.status.get("completionTime"))
    if ttl is not None and done is not None:
        left = (done - ctx.obs.now).total_seconds() + ttl
        if left <= 0:
            ctx.plan.actions.append(DeleteOwner())
        else:
            ctx.plan.requeue(left)
    return ctx.finish()


def _suspend(ctx: Ctx) -> Plan:
    for p in ctx.obs.pods:
        if not meta(p).get("deletionTimestamp"):
            ctx.plan.actions.append(Delete("Pod", meta(p)["name"]))
    ctx.status["workers"] = 0
    ctx.status.pop("nextRestartTime", None)
    ctx.phase(P.suspended, R.SUSPENDED, "suspended (spec.runPolicy.suspend=true): pods deleted; set it to "
              "false to resume from the last checkpoint")
    ctx.set(C.suspended, True, R.SUSPENDED, "runPolicy.suspend is true")
    return ctx.finish()


def _deadline_passed(ctx: Ctx, spec: Any) -> bool:
    deadline = spec.run_policy.active_deadline_seconds
    start = parse_time(ctx.status.get("startTime"))
    if deadline is None or start is None:
        return False
    left = (start - ctx.obs.now).total_seconds() + deadline
    if left > 0:
        ctx.plan.requeue(left)
        return False
    ctx.plan.actions += [Delete("Pod", meta(p)["name"]) for p in ctx.obs.pods if not meta(p).get("deletionTimestamp")]
    ctx.fail(R.DEADLINE_EXCEEDED, f"ran longer than spec.runPolicy.activeDeadlineSeconds={deadline}s; pods "
             "deleted. Raise the deadline, or resume from the last checkpoint with a new job")
    return True


def _succeeded(ctx: Ctx, current: list) -> Plan:
    ctx.plan.actions += [Delete("Pod", w.name) for w in current if w.pod_active and not w.deleting]
    ctx.status["completionTime"] = rfc3339(ctx.obs.now)
    ctx.status["workers"] = 0
    ctx.phase(P.succeeded, R.SUCCEEDED, f"all {len(current)} worker(s) exited 0")
    ctx.set(C.succeeded, True, R.SUCCEEDED, "training finished")
    ctx.set(C.running, False, R.SUCCEEDED, "training finished")
    return ctx.finish()


def _backing_off(ctx: Ctx) -> bool:
    due = parse_time(ctx.status.get("nextRestartTime"))
    if due is None:
        return False
    left = (due - ctx.obs.now).total_seconds()
    if left > 0:
        ctx.plan.requeue(left)
        return True
    ctx.status.pop("nextRestartTime", None)
    return False


def _running(ctx: Ctx, spec: Any, current: list) -> Plan:
    running = sum(w.state == "running" for w in current)
    ctx.status["workers"] = running
    crashed = next((w for w in current if w.sidecar), None)
    if running == spec.resources.nodes:
        ctx.phase(P.running, R.ALL_WORKERS_RUNNING, f"all {running} worker(s) running" + (
            f"; pod {crashed.name}: {crashed.sidecar}" if crashed else ""))
        ctx.set(C.running, True, R.ALL_WORKERS_RUNNING, f"{running}/{spec.resources.nodes} workers running")
    elif crashed:
        ctx.phase(P.created, R.POD_NOT_STARTING, f"{running}/{spec.resources.nodes} worker(s) running; pod "
                  f"{crashed.name}: {crashed.sidecar}")
    elif gated := [w for w in current if w.gated]:
        ctx.phase(P.created, R.WAITING_FOR_ADMISSION, f"{running}/{spec.resources.nodes} worker(s) running; "
                  f"{gated[0].gated}")
    elif stuck := [w for w in current if w.stuck]:
        # never "stuck without a reason": the scheduler's or kubelet's own words, e.g. "Insufficient
        # nvidia.com/gpu" or "CreateContainerConfigError: secret ... not found"
        reason = R.UNSCHEDULABLE if "cannot be scheduled" in stuck[0].stuck else R.POD_NOT_STARTING
        ctx.phase(P.created, reason, f"{running}/{spec.resources.nodes} worker(s) running; {stuck[0].stuck}")
    else:
        ctx.phase(P.created, R.GANG_CREATED, f"{running}/{spec.resources.nodes} worker(s) running")
    ctx.set(C.restarting, False, R.ALL_WORKERS_RUNNING, "") if ctx.has(C.restarting) else None
    return ctx.finish()
