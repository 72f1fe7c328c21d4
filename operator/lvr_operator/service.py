"""Observe -> reconcile (pure) -> apply, for one custom resource, serialised per object.

Called by every kopf handler (create/update/resume, timer, pod events), so one lock per object keeps
two triggers from reconciling the same job at once.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from datetime import datetime, timezone
from typing import Any

from lvr_operator import metrics
from lvr_operator.api.jobs import JobSpecBase
from lvr_operator.api.kinds import kind_by_name
from lvr_operator.api.phases import is_terminal
from lvr_operator.cluster import Cluster, CreateFailed
from lvr_operator.manifests.common import name_problem
from lvr_operator.reconcile.capacity import free_slots, gpu_holders
from lvr_operator.reconcile.dataset import DatasetObserved, reconcile_dataset
from lvr_operator.reconcile.job import JobObserved, reconcile_job
from lvr_operator.reconcile.model import Plan
from lvr_operator.reconcile.refused import after_create_failure
from lvr_operator.reconcile.pods import container_state
from lvr_operator.settings import OperatorSettings

_locks: defaultdict[tuple[str, str, str], threading.Lock] = defaultdict(threading.Lock)
# Objects with a coalescing reconcile waiting for their lock: it has read nothing yet, so it will see
# whatever a newer trigger would, and that trigger is dropped (a work queue holds a key once).
_queued: set[tuple[str, str, str]] = set()
_queued_lock = threading.Lock()
# Gang admission, one job at a time: the free GPUs are counted and the gang's pods created under this lock,
# so two jobs never both count the same free GPUs; the created (still unbound) pods then count as used for
# the next job until they are bound (capacity.free_slots), which is the reservation.
_admission = threading.Lock()
latencies: deque[float] = deque(maxlen=100_000)   # seconds per recent reconcile, read by bench/operator.py


def _failed_logs(cluster: Cluster, pods: list[dict[str, Any]], settings: OperatorSettings) -> dict[str, str]:
    """Last log lines of failed containers whose termination message is empty."""
    logs = {}
    for pod in pods:
        for c in (pod.get("spec") or {}).get("initContainers", []) + (pod.get("spec") or {}).get("containers", []):
            state, end = container_state(pod, c["name"], c in (pod["spec"].get("initContainers") or []))
            if state == "failed" and not (end and end.message):
                logs[pod["metadata"]["name"]] = cluster.pod_log(pod["metadata"]["namespace"], pod["metadata"]["name"],
                                                                c["name"], settings.log_lines)
                break
    return logs


def _gpu_spec(job: dict[str, Any], model: type) -> JobSpecBase | None:
    """The typed spec of a job that asks for GPUs; None for a CPU-only (never gated) or invalid one."""
    try:
        spec: JobSpecBase = model.model_validate(job.get("spec") or {})
    except ValueError:
        return None
    return spec if spec.resources.gpus_per_node > 0 else None


def _count_slots(cluster: Cluster, spec: JobSpecBase, namespace: str) -> tuple[int, list[str]]:
    """(workers of this spec that fit now, who holds the GPUs: named in `namespace`, counted elsewhere)."""
    nodes, pods = cluster.nodes_and_active_pods()
    slots = free_slots(nodes, pods, spec.resources.gpus_per_node, spec.placement.effective_node_selector(),
                       spec.placement.effective_tolerations())
    return slots, gpu_holders(pods, namespace=namespace)


def _nodes(spec: dict[str, Any]) -> int:
    try:
        return int((spec.get("resources") or {}).get("nodes", 1))
    except (TypeError, ValueError):
        return 1


def observe_job(cluster: Cluster, job: dict[str, Any], settings: OperatorSettings, now: datetime) -> JobObserved:
    """Read what `reconcile_job` needs, and no more: other children only while the gang is incomplete,
    dependencies only while the job can still start pods (from the watch cache when the operator has one,
    else from the API server: 5 list calls for the children). The free GPU slots are not counted here:
    `_count_slots` lists them from the API server under the admission lock (reconcile_object), since a gang
    admitted a moment ago must count before the watch shows its pods."""
    ns, spec, status = job["metadata"]["namespace"], job.get("spec") or {}, job.get("status") or {}
    obs = JobObserved(now=now, pods=cluster.pods(job))
    settled = is_terminal(status.get("phase")) and status.get("observedGeneration") == job["metadata"].get("generation")
    if settled:                            # finished, spec unchanged: only its pods matter (TTL, stragglers)
        return obs
    if len(obs.pods) < _nodes(spec):
        obs.children = cluster.children(job)
    if (spec.get("datasetRef") or {}).get("name"):
        obs.dataset = cluster.get_cr("LongVideoDataset", ns, spec["datasetRef"]["name"])
    if (spec.get("model") or {}).get("fromSFTJob"):
        obs.sft_job = cluster.get_cr("SFTJob", ns, spec["model"]["fromSFTJob"])
    phase = status.get("phase")
    run_policy = spec.get("runPolicy") or {}
    if not obs.pods and not is_terminal(phase) and not run_policy.get("suspend") \
            and run_policy.get("podGroup") is not None:
        obs.pod_groups = cluster.has_pod_groups()
    obs.logs = _failed_logs(cluster, obs.pods, settings)
    return obs


def _gated(job: dict[str, Any], obs: JobObserved) -> bool:
    """Whether this reconcile may admit a gang through our own capacity count: no pods yet, not finished or
    suspended, not queued in Kueue (Kueue's quota admits it then)."""
    run_policy = (job.get("spec") or {}).get("runPolicy") or {}
    return (not obs.pods and not is_terminal((job.get("status") or {}).get("phase"))
            and not run_policy.get("suspend") and not run_policy.get("queueName"))


def apply_plan(cluster: Cluster, obj: dict[str, Any], plan: Plan, pods: list[dict[str, Any]], now: datetime,
               settings: OperatorSettings) -> Plan:
    """Apply `plan`; when a child create is refused or its name is taken, apply the follow-up plan that
    says so in the status and deletes the pods of the partly created gang (returned instead)."""
    try:
        cluster.apply(obj, plan)
        return plan
    except CreateFailed as err:
        existing = [p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")]
        created = [name for kind, name in err.created if kind == "Pod"]
        follow = after_create_failure({**obj, "status": plan.status}, err.failure, existing + created, now, settings)
        cluster.apply({**obj, "status": plan.status}, follow)
        return follow


def reconcile_object(cluster: Cluster, kind: str, namespace: str, name: str, settings: OperatorSettings,
                     now: datetime | None = None, coalesce: bool = False) -> Plan | None:
    """One full reconcile of one object; None when it is gone or being deleted. `coalesce` (pod events,
    the resync timer): None at once when another coalescing reconcile of the object waits for its turn."""
    key = (kind, namespace, name)
    if coalesce:
        with _queued_lock:
            if key in _queued:
                return None
            _queued.add(key)
    with _locks[key]:
        if coalesce:
            with _queued_lock:
                _queued.discard(key)
        started = time.monotonic()
        try:
            return _reconcile_locked(cluster, kind, namespace, name, settings, now, started)
        except Exception:
            metrics.RECONCILES.labels(kind, "error").inc()
            raise


def _reconcile_locked(cluster: Cluster, kind: str, namespace: str, name: str, settings: OperatorSettings,
                      now: datetime | None, started: float) -> Plan | None:
    """The body of `reconcile_object`, under the object's lock."""
    obj = cluster.get_cr(kind, namespace, name)
    if obj is None or obj["metadata"].get("deletionTimestamp"):
        metrics.forget(kind, namespace, name)
        return None
    now = now or datetime.now(timezone.utc)
    if name_problem(kind, name) is not None:     # nothing can exist under this name: nothing to list
        plan = (reconcile_job(obj, JobObserved(now), settings) if kind_by_name(kind).is_job
                else reconcile_dataset(obj, DatasetObserved(now), settings))
        plan = apply_plan(cluster, obj, plan, [], now, settings)
    elif kind_by_name(kind).is_job:
        obs = observe_job(cluster, obj, settings, now)
        gpu_spec = _gpu_spec(obj, kind_by_name(kind).spec_model) if _gated(obj, obs) else None
        if gpu_spec is not None:                # this reconcile may admit a gang: count and create atomically
            with _admission:
                obs.free_slots, obs.gpu_holders = _count_slots(cluster, gpu_spec, namespace)
                if obs.free_slots is not None and obs.free_slots < gpu_spec.resources.nodes:
                    metrics.ADMISSION_WAITS.labels(kind).inc()
                plan = apply_plan(cluster, obj, reconcile_job(obj, obs, settings), obs.pods, now, settings)
        else:
            plan = apply_plan(cluster, obj, reconcile_job(obj, obs, settings), obs.pods, now, settings)
    else:
        pods = cluster.pods(obj)
        plan = reconcile_dataset(obj, DatasetObserved(now, pods, _failed_logs(cluster, pods, settings)), settings)
        plan = apply_plan(cluster, obj, plan, pods, now, settings)
    seconds = time.monotonic() - started
    latencies.append(seconds)
    metrics.record_reconcile(kind, namespace, name, seconds, metrics.outcome(plan), (plan.status or {}).get("phase"))
    return plan
