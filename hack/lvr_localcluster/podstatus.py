"""Pod status as a real kubelet reports it, computed from our record of each container (pure functions).

The phase rules follow the kubelet's: Pending until init containers are done and every container has
started once; Succeeded/Failed only when every container has terminated and none will be restarted;
Running otherwise (including while a container waits out its restart back-off).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field


def stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ContainerRecord:
    """What we know about one container of a pod; `state` is the API's one-key state dict."""

    name: str
    image: str
    init: bool = False
    state: dict = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict = field(default_factory=dict)
    restarts: int = 0
    pid: int | None = None
    done: bool = False  # terminated and will not be restarted
    ever_started: bool = False

    @property
    def running(self) -> bool:
        return "running" in self.state

    @property
    def exit_code(self) -> int | None:
        return self.state.get("terminated", {}).get("exitCode")

    def api_status(self) -> dict:
        status = {"name": self.name, "image": self.image, "imageID": f"local://{self.image}",
                  "ready": self.running and not self.init, "started": self.running,
                  "restartCount": self.restarts, "state": self.state, "lastState": self.last_state}
        if self.pid is not None:
            status["containerID"] = f"local://{self.pid}"
        return status


def terminated_state(exit_code: int, started_at: str, message: str = "") -> dict:
    """The `terminated` state for a process's return code (negative = killed by signal N: 128+N)."""
    code = 128 - exit_code if exit_code < 0 else exit_code
    reason = "Completed" if code == 0 else "Error"
    state = {"exitCode": code, "reason": reason, "startedAt": started_at, "finishedAt": stamp()}
    if exit_code < 0:
        state["signal"] = -exit_code
    if message:
        state["message"] = message
    return {"terminated": state}


def pod_phase(init: list[ContainerRecord], main: list[ContainerRecord]) -> str:
    """Pending / Running / Succeeded / Failed from the containers' records."""
    if any(r.done and r.exit_code != 0 for r in init):
        return "Failed"
    if not all(r.done for r in init) or not all(r.ever_started for r in main):
        return "Pending"
    if all(r.done for r in main):
        return "Succeeded" if all(r.exit_code == 0 for r in main) else "Failed"
    return "Running"


def _condition(kind: str, ok: bool, now: str, previous: dict, reason: str = "") -> dict:
    status = "True" if ok else "False"
    old = previous.get(kind, {})
    cond = {"type": kind, "status": status,
            "lastTransitionTime": old.get("lastTransitionTime") if old.get("status") == status else now}
    if reason and not ok:
        cond["reason"] = reason
    return cond


def pod_status(old_status: dict, init: list[ContainerRecord], main: list[ContainerRecord], start_time: str,
               pod_ip: str = "127.0.0.1") -> dict:
    """The whole `status` to write (lists complete, for a JSON merge patch), keeping PodScheduled as is."""
    now, phase = stamp(), pod_phase(init, main)
    previous = {c["type"]: c for c in old_status.get("conditions") or []}
    ready = phase == "Running" and all(r.running for r in main)
    conditions = [_condition("Initialized", all(r.done and r.exit_code == 0 for r in init), now, previous,
                             "ContainersNotInitialized"),
                  _condition("Ready", ready, now, previous, "ContainersNotReady"),
                  _condition("ContainersReady", ready, now, previous, "ContainersNotReady")]
    if "PodScheduled" in previous:
        conditions.append(previous["PodScheduled"])
    status = {"phase": phase, "conditions": conditions, "hostIP": "127.0.0.1", "podIP": pod_ip,
              "podIPs": [{"ip": pod_ip}], "startTime": start_time,
              "containerStatuses": [r.api_status() for r in main]}
    if init:
        status["initContainerStatuses"] = [r.api_status() for r in init]
    return status

