"""The steps of `reconcile_job` that need more than a few lines: context, spec checks, dependencies,
gang creation, failure handling and progress mirroring."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import ValidationError

from lvr_operator.api.common import S3CacheSpec
from lvr_operator.api.dataset import LongVideoDatasetSpec
from lvr_operator.api.kinds import kind_by_name
from lvr_operator.api.phases import ConditionType as C
from lvr_operator.api.phases import JobPhase as P
from lvr_operator.api.phases import Reason as R
from lvr_operator.manifests.common import ANNOTATION_PROGRESS, name_problem
from lvr_operator.manifests.job import config_digest, config_map, headless_service, pod_group, trainer_rbac
from lvr_operator.manifests.job_pod import worker_pod
from lvr_operator.manifests.trainer_config import build_trainer_config
from lvr_operator.reconcile.context import Ctx, explain_validation
from lvr_operator.reconcile.model import Create, Delete, rfc3339, tail
from lvr_trainer.config import ConfigError
from lvr_trainer.layout import checkpoint_model_uri
from lvr_trainer.contracts.exits import DOES_NOT_FIT_MARK, OUTPUT_IN_USE_MARK
from lvr_trainer.contracts.progress import parse_report

__all__ = ["Ctx", "Deps", "parse_job", "check_dependencies", "create_gang", "handle_failure", "handle_preemption",
           "mirror_progress", "note_config_change", "attempt_of"]


def attempt_of(status: dict[str, Any]) -> int:
    """The gang's attempt number: every restart, after a failure or a preemption, starts a new one."""
    return int(status.get("restarts") or 0) + int(status.get("preemptions") or 0)


@dataclass(frozen=True)
class Deps:
    dataset: LongVideoDatasetSpec | None
    model_uri: str
    dataset_s3: S3CacheSpec | None


def parse_job(ctx: Ctx) -> Any | None:
    """The typed spec, or None after marking the job InvalidSpec (schema-valid but unusable)."""
    model = kind_by_name(ctx.job["kind"]).spec_model
    try:
        spec = model.model_validate(ctx.job.get("spec") or {})
    except ValidationError as err:
        return ctx.invalid(explain_validation(err, model, "spec"))
    if (problem := name_problem(ctx.job["kind"], ctx.name)) is not None:
        return ctx.invalid(problem)
    try:  # unknown trainer keys, bad values, SP size vs GPUs: reported before anything is created
        build_trainer_config(spec, None, None, "spec.trainer")
    except ConfigError as err:
        return ctx.invalid(_spec_keys(str(err), spec))
    return spec


# Trainer config keys the operator derives from other spec fields: a problem there is the user's field.
_DERIVED_KEYS = {"output.dir": "spec.output.uri", "model.path": "spec.model.uri", "rollout.": "spec.rollout.",
                 "cache.uri": "spec.cache.s3"}


def _spec_keys(message: str, spec: Any) -> str:
    """Name the field the user wrote: `spec.trainer.<key>`, or the spec field a derived key came from."""
    message = message.replace("spec.trainer: key '", "key 'spec.trainer.")
    for key, field in _DERIVED_KEYS.items():
        section = key.split(".")[0]
        if section not in spec.trainer or key.rstrip(".") not in _flat_keys(spec.trainer):
            message = message.replace(f"key 'spec.trainer.{key}", f"key '{field}")
    return message


def _flat_keys(tree: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for k, v in tree.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= _flat_keys(v, f"{prefix}{k}.")
    return out


def _dataset(ctx: Ctx, spec: Any) -> LongVideoDatasetSpec | None | str:
    ds = ctx.obs.dataset
    if ds is None:
        return ctx.wait(R.DATASET_NOT_FOUND, f"spec.datasetRef.name: LongVideoDataset '{spec.dataset_ref.name}' "
                        f"not found in namespace '{ctx.ns}'; create it, or fix the name", invalid=True)
    try:
        ds_spec = LongVideoDatasetSpec.model_validate(ds.get("spec") or {})
    except ValidationError:
        return ctx.wait(R.DATASET_NOT_READY, f"LongVideoDataset '{spec.dataset_ref.name}' has an invalid spec; "
                        "see its InvalidSpec condition")
    phase = (ds.get("status") or {}).get("phase", "Pending")
    if phase != "Ready":
        return ctx.wait(R.DATASET_NOT_READY, f"waiting for LongVideoDataset '{spec.dataset_ref.name}' to be "
                        f"Ready (now {phase})")
    return ds_spec


def _model_uri(ctx: Ctx, spec: Any) -> str | None:
    """The model directory the trainer starts from: the spec's, or the SFTJob's final checkpoint's."""
    if spec.model.uri:
        return spec.model.uri
    if spec.model.preset:
        return f"preset:{spec.model.preset}"
    sft, ref = ctx.obs.sft_job, spec.model.from_sft_job
    if sft is None:
        return ctx.wait(R.SFTJOB_NOT_FOUND, f"spec.model.fromSFTJob: SFTJob '{ref}' not found in namespace "
                        f"'{ctx.ns}'; create it, or fix the name", invalid=True)
    status = sft.get("status") or {}
    if status.get("phase") == P.failed.value:
        ctx.fail(R.DEPENDENCY_FAILED, f"SFTJob '{ref}' Failed: {status.get('message', '')}; fix and rerun it, "
                 "then recreate this job")
        return None
    if status.get("phase") != P.succeeded.value:
        return ctx.wait(R.SFTJOB_NOT_SUCCEEDED, f"waiting for SFTJob '{ref}' to succeed "
                        f"(now {status.get('phase', 'Pending')})")
    checkpoint = (status.get("progress") or {}).get("lastCheckpoint")
    if not checkpoint:
        ctx.fail(R.DEPENDENCY_FAILED, f"SFTJob '{ref}' Succeeded but reported no checkpoint "
                 "(status.progress.lastCheckpoint); its trainer could not report progress. Start this job "
                 "from the model directory instead: spec.model.uri: <sft output>/checkpoints/<step>/model")
        return None
    return checkpoint_model_uri(checkpoint)


def check_dependencies(ctx: Ctx, spec: Any) -> Deps | None:
    """Dataset Ready and SFT checkpoint known, else WaitingForDependencies (None). Once the gang exists,
    a later change of a dependency does not stop it."""
    if ctx.obs.pods and ctx.status.get("modelUri"):
        ds = ctx.obs.dataset
        ds_spec = LongVideoDatasetSpec.model_validate(ds["spec"]) if ds else None
        return Deps(ds_spec, ctx.status["modelUri"], ds_spec.cache.s3 if ds_spec else None)
    ds_spec = _dataset(ctx, spec)
    if ds_spec is None:
        return None
    model_uri = _model_uri(ctx, spec)
    if model_uri is None:
        return None
    ctx.status["modelUri"] = model_uri
    ctx.set(C.dependencies_ready, True, R.DEPENDENCIES_READY, "dataset Ready" +
            (f", starting from SFTJob '{spec.model.from_sft_job}'" if spec.model.from_sft_job else ""))
    if ctx.has(C.invalid_spec):
        ctx.set(C.invalid_spec, False, R.SPEC_VALID, "")
    return Deps(ds_spec, model_uri, ds_spec.cache.s3)


def _gang_fits(ctx: Ctx, spec: Any) -> bool:
    free, need = ctx.obs.free_slots, spec.resources.nodes
    if free is None or free >= need or spec.run_policy.queue_name:     # with Kueue, Kueue's quota admits
        return True
    sel = spec.placement.effective_node_selector()
    msg = (f"gang of {need} pod(s) x {spec.resources.gpus_per_node} nvidia.com/gpu does not fit: {free} "
           f"can be placed now on Ready nodes matching nodeSelector {sel}; no pod is created until all fit")
    if ctx.obs.gpu_holders:
        msg += "; GPUs held by " + ", ".join(ctx.obs.gpu_holders)
    ctx.set(C.created, False, R.INSUFFICIENT_RESOURCES, msg)
    ctx.phase(P.pending, R.INSUFFICIENT_RESOURCES, msg)
    ctx.plan.waiting = msg
    ctx.plan.requeue(15)
    return False


def _pod_groups_served(ctx: Ctx, spec: Any) -> bool:
    if spec.run_policy.pod_group is None or ctx.obs.pod_groups is not False:
        return True
    msg = ("spec.runPolicy.podGroup needs scheduler-plugins' PodGroup API (podgroups.scheduling.x-k8s.io/v1alpha1), "
           "which this cluster does not serve: install scheduler-plugins (with its coscheduling plugin), or remove "
           "spec.runPolicy.podGroup")
    ctx.wait(R.POD_GROUP_API_MISSING, msg, invalid=True)
    return False


def create_gang(ctx: Ctx, spec: Any, deps: Deps, existing_ranks: set[int]) -> Any:
    """Create every missing child (check-then-create by name); the whole gang in one pass."""
    if not existing_ranks and not (_pod_groups_served(ctx, spec) and _gang_fits(ctx, spec)):
        return ctx.finish()
    job, s = ctx.job, ctx.settings
    cfg = build_trainer_config(spec, deps.dataset, deps.model_uri, "spec.trainer")
    attempt = attempt_of(ctx.status)
    resume = (ctx.status.get("progress") or {}).get("lastCheckpoint")
    fresh = not existing_ranks      # a new gang gets the spec's config now; one half created keeps its own
    actions = [Create(config_map(job, cfg), replace=True)] if fresh else []
    objs = [*([] if fresh else [config_map(job, cfg)]), headless_service(job, s),
            *trainer_rbac(job, spec.resources.nodes)]
    seen = ctx.obs.children or set()       # not listed: create them all (AlreadyExists is success)
    objs = [o for o in objs if (o["kind"], o["metadata"]["name"]) not in seen]
    if spec.run_policy.pod_group is not None:           # before the pods; AlreadyExists is success
        objs.append(pod_group(job, spec))
    objs += [worker_pod(job, spec, r, attempt, s, resume, deps.dataset_s3)
             for r in range(spec.resources.nodes) if r not in existing_ranks]
    ctx.plan.actions += actions + [Create(o) for o in objs]
    if fresh:
        ctx.status["trainerConfigDigest"] = config_digest(cfg)
    ctx.status.setdefault("startTime", rfc3339(ctx.obs.now))
    ctx.status["workers"] = 0
    n = spec.resources.nodes
    ctx.set(C.created, True, R.GANG_CREATED, f"{n} worker pod(s) created (attempt {attempt})")
    if ctx.old_phase not in (P.created.value, P.running.value):
        ctx.phase(P.created, R.GANG_CREATED, f"created {n} worker pod(s) (attempt {attempt})")
    ctx.plan.requeue(ctx.settings.resync_seconds)
    return ctx.finish()


PREEMPTION_HISTORY = 10      # entries kept in status.preemptionHistory


def _after(ctx: Ctx, seconds: float) -> str:
    return rfc3339(ctx.obs.now + timedelta(seconds=seconds))


def note_config_change(ctx: Ctx, spec: Any, deps: Deps) -> None:
    """While the gang runs, say whether spec.trainer (or a field its config derives from) changed since the
    gang started: the pods keep the config they started with, and the change applies at the next start."""
    started = ctx.status.get("trainerConfigDigest")
    if started is None or deps.dataset is None:      # no dataset seen now: the config cannot be rebuilt
        return
    if config_digest(build_trainer_config(spec, deps.dataset, deps.model_uri, "spec.trainer")) != started:
        ctx.set(C.trainer_config_changed, True, R.TRAINER_CONFIG_CHANGED,
                "spec.trainer (or a field the trainer's config derives from) changed while the gang runs: its "
                "pods keep the config they started with; the change applies when the gang next starts (after a "
                "restart or a preemption, or now: set runPolicy.suspend true, then false)")
    elif ctx.has(C.trainer_config_changed):
        ctx.set(C.trainer_config_changed, False, R.TRAINER_CONFIG_CURRENT, "the gang runs the spec's trainer config")


def handle_preemption(ctx: Ctx, spec: Any, current: list) -> Any:
    """A worker pod taken away (deleted, evicted, preempted) is not a failure: the rest of the gang is
    deleted too (every trainer checkpoints on SIGTERM at its next step boundary), and a new attempt
    resumes from that checkpoint, counted in status.preemptions, never against backoffLimit. The first
    restart is immediate, later ones back off exponentially; past runPolicy.maxPreemptions the job fails."""
    gone = min((w for w in current if w.preempted), key=lambda w: w.rank)
    count, rp = int(ctx.status.get("preemptions") or 0) + 1, spec.run_policy
    what = f"worker {gone.rank} (pod {gone.name}) {gone.preempted}"
    entry = f"{rfc3339(ctx.obs.now)} {what}"[:300]
    history = [*(ctx.status.get("preemptionHistory") or []), entry][-PREEMPTION_HISTORY:]
    ctx.plan.actions += [Delete("Pod", w.name) for w in current if not w.deleting]
    ctx.status["preemptions"] = count
    ctx.status["preemptionHistory"] = history
    ctx.status["workers"] = 0
    ctx.status.pop("nextRestartTime", None)
    if count > rp.max_preemptions:
        ctx.fail(R.PREEMPTION_LIMIT_EXCEEDED, f"{what}: preemption {count} exceeds runPolicy.maxPreemptions "
                 f"{rp.max_preemptions}; raise it to keep restarting, or find what keeps taking the pods away "
                 "(last preemptions: " + "; ".join(history) + ")")
        return ctx.finish()
    delay = 0 if count == 1 else min(rp.backoff_seconds * 2 ** (count - 2), rp.max_backoff_seconds)
    when = "at once" if delay == 0 else f"in {delay}s"
    if delay:
        ctx.status["nextRestartTime"] = _after(ctx, delay)
    msg = (f"{what}; restarting the gang {when} from the checkpoint saved on SIGTERM (preemption {count}/"
           f"{rp.max_preemptions}, not counted against backoffLimit {rp.backoff_limit})")
    ctx.set(C.restarting, True, R.PREEMPTED, msg)
    ctx.set(C.running, False, R.PREEMPTED, what)
    ctx.phase(P.restarting, R.PREEMPTED, msg, force_event=True)
    ctx.plan.requeue(max(delay, 2))
    return ctx.finish()


def handle_failure(ctx: Ctx, spec: Any, current: list) -> Any:
    """A failed worker restarts the whole gang after a backoff, or fails the job at backoffLimit."""
    bad = min((w for w in current if w.state == "failed"), key=lambda w: w.rank)
    code = bad.end.exit_code if bad.end else None
    logs = tail(ctx.obs.logs.get(bad.name) or (bad.end.message if bad.end else ""), ctx.settings.log_lines)
    why = (bad.end.message.strip().splitlines() or [""])[-1][:300] if bad.end and bad.end.message else ""
    what = f"worker {bad.rank} (pod {bad.name}) exited with code {code}" + (
        f" ({bad.end.reason})" if bad.end and bad.end.reason else "") + (f": {why}" if why else "")
    if sidecar := next((w.sidecar for w in sorted(current, key=lambda w: w.rank) if w.sidecar), None):
        what += f"; its {sidecar}"     # the cause, when the trainer died of its sidecar's crash
    if bad.end and OUTPUT_IN_USE_MARK in bad.end.message:   # another job's output: a restart cannot help
        ctx.plan.actions += [Delete("Pod", w.name) for w in current if w.pod_active and not w.deleting]
        why = bad.end.message.strip().splitlines()[-1][:1500]
        ctx.fail(R.OUTPUT_IN_USE, f"worker {bad.rank} (pod {bad.name}) stopped before training: {why}")
        return ctx.finish()
    if bad.end and DOES_NOT_FIT_MARK in bad.end.message:     # (under torchrun the exit code is its own)
        # the same plan on the same GPUs gives the same verdict: a restart cannot help
        ctx.plan.actions += [Delete("Pod", w.name) for w in current if w.pod_active and not w.deleting]
        verdict = bad.end.message.strip().splitlines()[-1][:1500] if bad.end.message else "(no message)"
        ctx.fail(R.DOES_NOT_FIT, f"worker {bad.rank} (pod {bad.name}) stopped before loading weights: {verdict}. "
                 f"Change what the plan names, set resources.gpuMemory if the GPUs hold more than "
                 f"{spec.resources.gpu_memory}, or runPolicy.admitBeyondPlan: true to start anyway (`lvr plan` "
                 "prints the same plan)")
        return ctx.finish()
    restarts, rp = int(ctx.status.get("restarts") or 0), spec.run_policy
    if restarts < rp.backoff_limit:
        delay = min(rp.backoff_seconds * 2 ** restarts, rp.max_backoff_seconds)
        ctx.plan.actions += [Delete("Pod", w.name) for w in current if not w.deleting]
        ctx.status["restarts"] = restarts + 1
        ctx.status["workers"] = 0
        ctx.status["nextRestartTime"] = _after(ctx, delay)
        msg = f"{what}; restarting the gang ({restarts + 1}/{rp.backoff_limit}) in {delay}s from the last checkpoint"
        ctx.set(C.restarting, True, R.BACKOFF, msg)
        ctx.set(C.running, False, R.WORKER_FAILED, what)
        ctx.phase(P.restarting, R.WORKER_FAILED, msg, force_event=True)
        ctx.plan.requeue(delay)
        return ctx.finish()
    ctx.plan.actions += [Delete("Pod", w.name) for w in current if w.pod_active and not w.deleting]
    ctx.fail(R.BACKOFF_LIMIT_EXCEEDED, f"{what} after {restarts} restart(s) (backoffLimit {rp.backoff_limit})"
             + (f"; last log lines:\n{logs}" if logs else ""))
    return ctx.finish()


def mirror_progress(ctx: Ctx, current: list) -> None:
    """Copy rank 0's `longvideo.dev/progress` annotation (lvr_trainer's ProgressReport) into status.progress;
    values the schema refuses (a NaN loss, an over-long text) are left out and counted in droppedValues."""
    rank0 = next((w for w in current if w.rank == 0), None)
    report, dropped = parse_report((rank0.annotations or {}).get(ANNOTATION_PROGRESS)) if rank0 else (None, 0)
    if report is None and not dropped:
        return
    progress = dict(ctx.status.get("progress") or {})
    progress.update(report.status_fields() if report else {})
    progress.pop("droppedValues", None)
    if dropped:
        progress["droppedValues"] = dropped
    step, total = progress.get("step"), progress.get("totalSteps")
    if isinstance(step, int) and isinstance(total, int) and total > 0:
        progress["percent"] = min(100, step * 100 // total)
        progress["summary"] = f"{step}/{total}"
    ctx.status["progress"] = progress
