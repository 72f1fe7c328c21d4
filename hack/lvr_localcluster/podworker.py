"""One pod on the local kubelet: its containers as process groups, restarts, status reports, teardown.

A PodWorker thread owns one pod from the moment the scheduler binds it to one of our nodes until its
processes are gone: it materialises volumes, runs init containers in order, then every container at once
(sidecars included), restarts them per restartPolicy, and patches the pod's status when anything changes.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from lvr_localcluster import procs
from lvr_localcluster.kubeapi import ApiError
from lvr_localcluster.podenv import ContainerConfigError, container_argv, container_env, rewrite_paths
from lvr_localcluster.podstatus import ContainerRecord, pod_phase, pod_status, stamp, terminated_state
from lvr_localcluster.podvolumes import container_mounts, materialise_volumes

if TYPE_CHECKING:
    from lvr_localcluster.kubelet import Kubelet

POLL_SECONDS = 0.2
CONFIG_RETRY_SECONDS = 2.0
BACKOFF_START, BACKOFF_MAX = 1.0, 10.0  # a real kubelet: 10 s doubling to 5 min; shortened for tests
MESSAGE_BYTES, FALLBACK_LINES, FALLBACK_BYTES = 4096, 80, 2048  # the kubelet's termination message limits


class PodWorker(threading.Thread):
    """Run and report one pod; `request_stop(grace)` when it is deleted."""

    def __init__(self, kubelet: Kubelet, pod: dict):
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.kubelet, self.pod, self.uid = kubelet, pod, meta["uid"]
        self.path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        self.dir = kubelet.pods_dir / meta["namespace"] / f"{meta['name']}.{self.uid[:8]}"
        spec = pod["spec"]
        self.init = [ContainerRecord(c["name"], c.get("image", ""), init=True) for c in spec.get("initContainers") or []]
        self.main = [ContainerRecord(c["name"], c.get("image", "")) for c in spec["containers"]]
        self.specs = {c["name"]: c for c in (spec.get("initContainers") or []) + spec["containers"]}
        self.policy = spec.get("restartPolicy", "Always")
        self.procs: dict[str, subprocess.Popen] = {}
        self.started_at: dict[str, str] = {}
        self.next_start: dict[str, float] = {}
        self.volumes: dict[str, Path] | None = None
        self.stop_event, self.grace = threading.Event(), 30.0
        self.start_time, self.last_status = stamp(), None
        self.identity = kubelet.network.attach(pod, self.dir)     # its address, hostname and /etc/hosts

    def request_stop(self, grace: float) -> None:
        """Pod deleted (or kubelet stopping): end its processes, SIGTERM then SIGKILL after `grace` s."""
        self.grace = grace
        self.stop_event.set()

    def run(self) -> None:
        try:
            self._report()
            while not self.stop_event.is_set():
                changed = self._step()
                if changed:
                    self._report()
                if pod_phase(self.init, self.main) in ("Succeeded", "Failed"):
                    break
                self.stop_event.wait(POLL_SECONDS)
        except ApiError as err:
            if err.status != 404:
                self.kubelet.log(f"{self.path}: {err}")
        except Exception as err:  # noqa: BLE001 - a bug here must not kill the kubelet; keep it visible
            self.kubelet.log(f"{self.path}: worker crashed: {err!r}")
        finally:
            self._kill_all(self.grace if self.stop_event.is_set() else 0.0)
            self.kubelet.worker_done(self)

    def _step(self) -> bool:
        """Advance every container one tick; True when something the API should hear about changed."""
        if self.volumes is None and not self._prepare_volumes():
            return True
        for record in self.init:  # init containers run one at a time, in order, each to success
            if not record.done:
                return self._tick(record)
            if record.exit_code != 0:
                return False  # failed for good (restartPolicy Never): the pod is Failed
        return any([self._tick(record) for record in self.main])

    def _prepare_volumes(self) -> bool:
        try:
            self.volumes = materialise_volumes(self.pod, self.dir / "volumes", self.kubelet.lookup)
            return True
        except ContainerConfigError as err:
            for record in self.init + self.main:
                record.state = {"waiting": {"reason": err.reason, "message": str(err)}}
            self.stop_event.wait(CONFIG_RETRY_SECONDS)
            return False

    def _tick(self, record: ContainerRecord) -> bool:
        proc = self.procs.get(record.name)
        if proc is None:
            if record.done or time.monotonic() < self.next_start.get(record.name, 0.0):
                return False
            return self._start(record)
        code = proc.poll()
        if code is None:
            return False
        self._on_exit(record, code)
        return True

    def _start(self, record: ContainerRecord) -> bool:
        spec = self.specs[record.name]
        try:
            argv, env, cwd = self._process_plan(spec)
        except ContainerConfigError as err:
            if err.reason == "RunContainerError":  # like exec-not-found in a runtime: the start fails
                record.state = terminated_state(127, stamp(), str(err))
                record.ever_started = True
                self._after_termination(record, 127)
                return True
            record.state = {"waiting": {"reason": err.reason, "message": str(err)}}
            self.next_start[record.name] = time.monotonic() + CONFIG_RETRY_SECONDS
            return True
        log_path = self.dir / "logs" / f"{record.name}.log"
        proc = procs.spawn(argv, log_path=log_path, env=env, cwd=cwd, pid_dir=self.kubelet.pid_dir,
                           marker=self.kubelet.marker, name=f"pod-{self.uid[:8]}-{record.name}")
        self.procs[record.name] = proc
        self.started_at[record.name] = stamp()
        record.pid, record.ever_started = proc.pid, True
        record.state = {"running": {"startedAt": self.started_at[record.name]}}
        return True

    def _process_plan(self, spec: dict) -> tuple[list[str], dict[str, str], str]:
        """argv, env and cwd for one container, with mount paths rewritten to local directories."""
        mounts = container_mounts(spec, self.volumes or {})
        # terminationMessagePath: a per-container file, like the kubelet's bind mount of one
        message_file = self._message_file(spec["name"])
        message_file.parent.mkdir(parents=True, exist_ok=True)
        message_file.write_bytes(b"")
        mounts = sorted([*mounts, (spec.get("terminationMessagePath") or "/dev/termination-log", str(message_file))],
                        key=lambda m: len(m[0]), reverse=True)
        base = self.kubelet.base_env(self.pod, self.dir)
        env = container_env(self.pod, spec, self.kubelet.lookup, base)
        # only what the pod spec set is rewritten: the stand-in's own HOME, TMPDIR, KUBECONFIG are local paths
        env = {k: v if base.get(k) == v else rewrite_paths(v, mounts) for k, v in env.items()}
        env["LVR_LOCAL_MOUNTS"] = json.dumps(dict(mounts))
        argv = [rewrite_paths(a, mounts) for a in container_argv(spec, env, self.kubelet.venv_bin)]
        argv = self.kubelet.network.command(self.identity, argv)
        cwd = rewrite_paths(spec.get("workingDir") or str(self.dir / "work"), mounts)
        if not Path(cwd).is_dir():
            cwd = str(self.dir / "work")
        for sub in ("work", "home", "tmp"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        return argv, env, cwd

    def _on_exit(self, record: ContainerRecord, code: int) -> None:
        proc = self.procs.pop(record.name)
        procs.kill_group(proc.pid, 0.0, proc)  # the container is gone: so are the children it left behind
        procs.forget(self.kubelet.pid_dir, proc)
        record.state = terminated_state(code, self.started_at.get(record.name, stamp()),
                                        self._termination_message(record.name, code))
        self._after_termination(record, record.exit_code or 0)

    def _message_file(self, container: str) -> Path:
        return self.dir / "termination" / container

    def _termination_message(self, container: str, code: int) -> str:
        """What the container wrote at its terminationMessagePath (first 4096 bytes); for
        FallbackToLogsOnError with an empty file and a non-zero exit, the log's tail (80 lines, 2048 bytes)."""
        path = self._message_file(container)
        message = path.read_bytes()[:MESSAGE_BYTES] if path.is_file() else b""
        policy = self.specs[container].get("terminationMessagePolicy")
        if not message.strip() and code != 0 and policy == "FallbackToLogsOnError":
            log = self.dir / "logs" / f"{container}.log"
            lines = log.read_bytes().splitlines()[-FALLBACK_LINES:] if log.is_file() else []
            message = b"\n".join(lines)[-FALLBACK_BYTES:]
        return message.decode("utf-8", "replace")

    def _after_termination(self, record: ContainerRecord, code: int) -> None:
        restart = self.policy == "Always" and not record.init or self.policy != "Never" and code != 0
        if not restart:
            record.done = True
            return
        delay = min(BACKOFF_MAX, BACKOFF_START * 2 ** record.restarts)
        record.last_state, record.restarts = record.state, record.restarts + 1
        record.state = {"waiting": {"reason": "CrashLoopBackOff" if code else "Completed",
                                    "message": f"back-off {delay:.0f}s restarting container {record.name}"}}
        self.next_start[record.name] = time.monotonic() + delay

    def _report(self) -> None:
        status = pod_status(self.pod.get("status") or {}, self.init, self.main, self.start_time, self.identity.ip)
        if status != self.last_status:
            self.kubelet.api.patch(f"{self.path}/status", {"status": status})
            self.last_status = status

    def _kill_all(self, grace: float) -> None:
        threads = [threading.Thread(target=procs.kill_group, args=(p.pid, grace, p)) for p in self.procs.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for proc in self.procs.values():
            procs.forget(self.kubelet.pid_dir, proc)
        self.procs.clear()
