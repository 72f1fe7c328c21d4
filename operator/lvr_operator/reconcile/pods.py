"""What a pod says about its worker: pending, running, succeeded or failed (with exit code and log tail).

Judged by the trainer container, not the pod phase: an RLJob pod may keep its rollout sidecar running
after the trainer exits, so the pod phase alone would never reach Succeeded. A sidecar that crashed is
named (`sidecar_failure`): the trainer then fails too, and its owner's status should say why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lvr_operator.manifests.common import KUEUE_GATE, KUEUE_QUEUE, LABEL_ATTEMPT, LABEL_RANK
from lvr_trainer.contracts.exits import EXIT_PREEMPTED, PREEMPTED_MARK


@dataclass(frozen=True)
class ContainerEnd:
    exit_code: int | None
    reason: str
    message: str


@dataclass(frozen=True)
class Worker:
    name: str
    rank: int
    attempt: int
    state: str                      # pending | running | succeeded | failed
    end: ContainerEnd | None = None
    deleting: bool = False
    annotations: dict[str, str] | None = None
    pod_active: bool = True         # pod phase not Succeeded/Failed (a sidecar may still run)
    stuck: str | None = None        # why the pod cannot start or keeps failing (see `stuck_reason`)
    sidecar: str | None = None      # the rollout sidecar's crash, if it crashed (see `sidecar_failure`)
    preempted: str | None = None    # how the pod was taken away, not failed (see `preemption`)
    gated: str | None = None        # held at a scheduling gate, e.g. until Kueue admits the gang


def _label_int(pod: dict[str, Any], key: str) -> int:
    try:
        return int((pod["metadata"].get("labels") or {}).get(key, "-1"))
    except ValueError:
        return -1


def container_status(pod: dict[str, Any], name: str, init: bool = False) -> dict[str, Any] | None:
    key = "initContainerStatuses" if init else "containerStatuses"
    return next((c for c in (pod.get("status") or {}).get(key) or [] if c.get("name") == name), None)


def terminated(status: dict[str, Any] | None) -> ContainerEnd | None:
    t = ((status or {}).get("state") or {}).get("terminated")
    if not t:
        return None
    return ContainerEnd(t.get("exitCode"), t.get("reason") or "", t.get("message") or "")


def container_state(pod: dict[str, Any], name: str, init: bool = False) -> tuple[str, ContainerEnd | None]:
    """(pending|running|succeeded|failed, end) for one container, falling back to the pod phase."""
    st = container_status(pod, name, init)
    end = terminated(st)
    if end is not None:
        return ("succeeded" if end.exit_code == 0 else "failed"), end
    phase = (pod.get("status") or {}).get("phase")
    if phase == "Failed":
        s = pod.get("status") or {}
        return "failed", ContainerEnd(None, s.get("reason") or "PodFailed", s.get("message") or "")
    if phase == "Succeeded":
        return "succeeded", ContainerEnd(0, "Completed", "")
    if ((st or {}).get("state") or {}).get("running") is not None:
        return "running", None
    return "pending", None


def worker(pod: dict[str, Any], container: str = "trainer") -> Worker:
    state, end = container_state(pod, container)
    meta = pod["metadata"]
    return Worker(meta["name"], _label_int(pod, LABEL_RANK), _label_int(pod, LABEL_ATTEMPT), state, end,
                  bool(meta.get("deletionTimestamp")), meta.get("annotations") or {},
                  (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"),
                  stuck_reason(pod), sidecar_failure(pod), preemption(pod, end), scheduling_gate(pod))


def scheduling_gate(pod: dict[str, Any]) -> str | None:
    """Why a pod waits at a scheduling gate (Kueue's until it admits the gang), or None."""
    gates = [g.get("name", "") for g in (pod.get("spec") or {}).get("schedulingGates") or []]
    if not gates:
        return None
    name = pod["metadata"]["name"]
    if KUEUE_GATE in gates:
        queue = (pod["metadata"].get("labels") or {}).get(KUEUE_QUEUE, "?")
        return f"pod {name} waits for Kueue to admit the gang (queue {queue}; `kubectl get workloads` shows why)"
    return f"pod {name} is held at scheduling gate(s) {', '.join(gates)}"


def preemption(pod: dict[str, Any], end: ContainerEnd | None) -> str | None:
    """How the pod was taken away rather than failed, or None: deleted (by a user, a drain, a controller),
    evicted or preempted (the kubelet's or scheduler's words), or its trainer stopped on SIGTERM with a
    checkpoint (EXIT_PREEMPTED, or its termination message says so, as under torchrun)."""
    meta, status = pod["metadata"], pod.get("status") or {}
    for c in status.get("conditions") or []:
        if c.get("type") == "DisruptionTarget" and c.get("status") == "True":
            reason, message = c.get("reason") or "DisruptionTarget", c.get("message") or ""
            return f"was disrupted ({reason}" + (f": {message})" if message else ")")
    if status.get("reason") in ("Evicted", "Preempting", "Terminated", "Shutdown", "NodeShutdown"):
        return f"was {status['reason'].lower()}" + (f": {status.get('message')}" if status.get("message") else "")
    if end is not None and (end.exit_code == EXIT_PREEMPTED or end.message.lstrip().startswith(PREEMPTED_MARK)):
        return "stopped on SIGTERM after saving a checkpoint"
    if meta.get("deletionTimestamp"):
        return "was deleted"
    return None


def sidecar_failure(pod: dict[str, Any], name: str = "rollout") -> str | None:
    """'rollout sidecar exited with code N (reason): message' when the sidecar (a regular container, or a
    native one that the kubelet restarts) ended with a non-zero code, else None."""
    for init in (False, True):
        st = container_status(pod, name, init) or {}
        for end in (terminated(st), terminated({"state": st.get("lastState")})):
            if end is not None and end.exit_code != 0:
                why = (end.message.strip().splitlines() or [""])[-1][:300]
                return (f"rollout sidecar exited with code {end.exit_code}" + (f" ({end.reason})" if end.reason else "")
                        + (f": {why}" if why else ""))
    return None


# Container waiting reasons that do not go away by waiting (kubelet and our local stand-in's names).
STUCK_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError", "ErrImagePull", "ImagePullBackOff",
                           "InvalidImageName", "ErrImageNeverPull", "CrashLoopBackOff", "RunContainerError",
                           "ImageNotMapped", "ImageInspectError"})


def stuck_reason(pod: dict[str, Any]) -> str | None:
    """Why a pod cannot start or run, in the scheduler's or kubelet's own words, or None.

    Unschedulable (PodScheduled=False), or a container waiting for a reason that waiting does not cure
    (a missing Secret or ConfigMap, an image that cannot be pulled, a crash loop)."""
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
            return f"pod {name} cannot be scheduled: {c.get('message') or 'unschedulable'}"
    for key in ("initContainerStatuses", "containerStatuses"):
        for cs in status.get(key) or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_REASONS:
                message = waiting.get("message") or ""
                return (f"pod {name}: container {cs.get('name')}: {waiting['reason']}"
                        + (f": {message}" if message else ""))
    return None
