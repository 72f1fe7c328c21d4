"""LongVideoDataset reconciliation: one preprocessing pod per spec generation, retried up to backoffLimit.

Pending -> Validating (init container `validate` running) -> Caching (`encode` running) -> Ready, or
Failed with the step, exit code and report. Row and cache counts come from the steps' JSON reports
(termination messages). Editing the spec re-runs preprocessing for the new generation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from lvr_operator.api.dataset import LongVideoDatasetSpec
from lvr_operator.api.phases import ConditionType as C
from lvr_operator.api.phases import DatasetPhase as D
from lvr_operator.api.phases import Reason as R
from lvr_operator.manifests.common import LABEL_ATTEMPT, LABEL_GENERATION, meta, name_problem, prep_pod_name
from lvr_operator.manifests.dataset import BUILD, ENCODE, VALIDATE, prep_pod
from lvr_operator.reconcile.context import Ctx, explain_validation
from lvr_operator.reconcile.model import Create, Delete, json_or_none, rfc3339, tail
from lvr_operator.reconcile.pods import container_state, stuck_reason
from lvr_operator.settings import OperatorSettings


MAX_FAILED_EXAMPLES = 10
_FAILURE_HINTS = {
    BUILD: (R.BUILD_FAILED, "check spec.source.build's endpoints and API key Secret (the pod's log names the "
            "failing call); a retry redoes the calls, `lvr data build` run by hand keeps a journal"),
    VALIDATE: (R.VALIDATION_FAILED, "run `lvr data validate` on the file to see every bad row, fix them or "
               "raise spec.maxErrorRate"),
    ENCODE: (R.CACHING_FAILED, "check the cache endpoint, credentials and encoder model"),
}


@dataclass
class DatasetObserved:
    now: datetime
    pods: list[dict[str, Any]] = field(default_factory=list)
    logs: dict[str, str] = field(default_factory=dict)


def _label(pod: dict[str, Any], key: str) -> int:
    try:
        return int((meta(pod).get("labels") or {}).get(key, "-1"))
    except ValueError:
        return -1


def _steps(pod: dict[str, Any]) -> list[tuple[str, bool]]:
    """(container, is_init) in run order."""
    spec = pod.get("spec") or {}
    return ([(c["name"], True) for c in spec.get("initContainers") or []]
            + [(c["name"], False) for c in spec.get("containers") or []])


def _counts(ctx: Ctx, pod: dict[str, Any]) -> None:
    """Row counts from the validate report, cache counts from the encode report."""
    for name, init in _steps(pod):
        state, end = container_state(pod, name, init)
        report = json_or_none(end.message if end else None)
        if not report:
            continue
        if name == BUILD:
            ctx.status["built"] = {"videos": int(report.get("videos", 0)), "skipped": int(report.get("skipped", 0)),
                                   "clips": int(report.get("clips", 0)), "questions": int(report.get("questions", 0)),
                                   "kept": int(report.get("kept", 0)), "dropped": dict(report.get("dropped") or {}),
                                   "calls": int(report.get("calls", 0))}
        elif name == VALIDATE:
            total = int(report.get("rows", report.get("total", 0)))
            valid = int(report.get("valid", 0))
            ctx.status["rows"] = {"total": total, "valid": valid, "invalid": int(report.get("invalid", total - valid))}
        elif name == ENCODE:     # `lvr encode --json`: videos now in the cache (encoded + already there)
            counts = [report.get(k) for k in ("encoded", "hits", "bytes_written", "bytes_read")]
            if all(isinstance(c, int) for c in counts):
                ctx.status["cachedVideos"] = counts[0] + counts[1]
                ctx.status["cachedBytes"] = counts[2] + counts[3]     # written now + read back for hits
            if isinstance(report.get("failed"), int):
                ctx.status["failedVideos"] = report["failed"]
                examples = [f"{f.get('video')}: {f.get('error')}" for f in report.get("failed_videos") or []
                            if isinstance(f, dict)]
                if examples:
                    ctx.status["failedVideoExamples"] = examples[:MAX_FAILED_EXAMPLES]


def _pod_progress(pod: dict[str, Any]) -> tuple[str, str | None, Any]:
    """(state of the pod as a whole, the step it is at, the failing step's end)."""
    for name, init in _steps(pod):
        state, end = container_state(pod, name, init)
        if state == "failed":
            return "failed", name, end
        if state in ("pending", "running"):
            return ("running" if state == "running" or name != _steps(pod)[0][0] else "pending"), name, None
    return "succeeded", None, None


def reconcile_dataset(ds: dict[str, Any], obs: DatasetObserved, settings: OperatorSettings) -> Any:
    ctx = Ctx(ds, obs, settings)
    try:
        spec = LongVideoDatasetSpec.model_validate(ds.get("spec") or {})
    except ValidationError as err:
        return _invalid(ctx, explain_validation(err, LongVideoDatasetSpec, "spec"))
    if (problem := name_problem(ds["kind"], ctx.name)) is not None:
        return _invalid(ctx, problem)
    gen = ctx.generation or 1
    old = [p for p in obs.pods if _label(p, LABEL_GENERATION) != gen]
    ctx.plan.actions += [Delete("Pod", meta(p)["name"]) for p in old if not meta(p).get("deletionTimestamp")]
    if ctx.status.get("observedGeneration") != gen and ctx.old_phase in (D.ready.value, D.failed.value):
        ctx.status = {"phase": D.pending.value, "conditions": [], "attempts": 0}
    elif ctx.old_phase in (D.ready.value, D.failed.value):
        return ctx.finish()
    pods = sorted((p for p in obs.pods if _label(p, LABEL_GENERATION) == gen), key=lambda p: _label(p, LABEL_ATTEMPT))
    if not pods:
        return _start(ctx, spec, gen, 0)
    latest = pods[-1]
    _counts(ctx, latest)
    state, step, end = _pod_progress(latest)
    if state == "failed":
        return _failed(ctx, spec, gen, latest, step, end)
    if state == "succeeded":
        ctx.status["completionTime"] = rfc3339(obs.now)
        ctx.set(C.ready, True, R.READY, "validated" + (" and cached" if step != VALIDATE else ""))
        rows = ctx.status.get("rows") or {}
        failed, built = ctx.status.get("failedVideos"), ctx.status.get("built")
        ctx.phase(D.ready, R.READY, f"{rows.get('valid', '?')} valid rows of {rows.get('total', '?')}"
                  + (f"; {ctx.status['cachedVideos']} videos cached" if "cachedVideos" in ctx.status else "")
                  + (f"; {failed} videos failed to encode and were skipped (see failedVideoExamples)"
                     if failed else "")
                  + (f"; built {built['kept']} questions from {built['videos']} videos" if built else ""))
        return ctx.finish()
    stuck = stuck_reason(latest)     # a pod that cannot start says why, in the kubelet's words
    if step == ENCODE and state == "running":
        ctx.set(C.validated, True, R.VALIDATING, "rows validated")
        ctx.phase(D.caching, R.POD_NOT_STARTING if stuck else R.CACHING,
                  stuck or "encoding videos into the embedding cache")
    elif step == BUILD:
        ctx.phase(D.building, R.POD_NOT_STARTING if stuck else R.BUILDING,
                  stuck or "building the rows: captioning clips, writing and filtering questions")
    else:
        ctx.phase(D.validating, R.POD_NOT_STARTING if stuck else R.VALIDATING, stuck or "validating rows and videos")
    ctx.plan.requeue(settings.resync_seconds)
    return ctx.finish()


def _start(ctx: Ctx, spec: LongVideoDatasetSpec, gen: int, attempt: int) -> Any:
    name = prep_pod_name(ctx.name, gen, attempt)
    ctx.plan.actions.append(Create(prep_pod(ctx.job, spec, name, attempt, ctx.settings)))
    ctx.status["attempts"] = attempt + 1
    ctx.status.setdefault("startTime", rfc3339(ctx.obs.now))
    first = (D.building, R.BUILDING) if spec.source.build else (D.validating, R.VALIDATING)
    ctx.phase(*first, f"preprocessing pod {name} created")
    ctx.plan.requeue(ctx.settings.resync_seconds)
    return ctx.finish()


def _failed(ctx: Ctx, spec: LongVideoDatasetSpec, gen: int, pod: dict[str, Any], step: str | None, end: Any) -> Any:
    attempt = _label(pod, LABEL_ATTEMPT)
    name = meta(pod)["name"]
    logs = tail(ctx.obs.logs.get(name) or (end.message if end else ""), ctx.settings.log_lines)
    what = f"step `{step}` of pod {name} exited with code {end.exit_code if end else None}"
    if attempt < spec.backoff_limit:
        ctx.status["message"] = f"{what}; retrying ({attempt + 1}/{spec.backoff_limit})"
        return _start(ctx, spec, gen, attempt + 1)
    reason, hint = _FAILURE_HINTS.get(step, _FAILURE_HINTS[ENCODE])
    msg = f"{what} after {attempt + 1} attempt(s): {hint}" + (f"; last output:\n{logs}" if logs else "")
    ctx.status["completionTime"] = rfc3339(ctx.obs.now)
    ctx.set(C.ready, False, reason, msg)
    ctx.phase(D.failed, reason, msg)
    return ctx.finish()


def _invalid(ctx: Ctx, message: str) -> Any:
    ctx.set(C.invalid_spec, True, R.INVALID_SPEC, message)
    ctx.set(C.ready, False, R.INVALID_SPEC, message)
    ctx.phase(D.failed, R.INVALID_SPEC, message)
    ctx.plan.invalid = message
    return ctx.finish()
