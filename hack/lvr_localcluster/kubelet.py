"""The kubelet stand-in: watch pods bound to our nodes, run them as local processes, finish deletions.

It does what a kubelet does for the API (pod status, graceful deletion), gives each pod an address and
cluster DNS names of its own (podnet.py), and nothing else a container runtime does (no images, no
isolation of files or traffic): see README.md in this directory for every limit.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from lvr_localcluster.kubeapi import ApiError, KubeApi
from lvr_localcluster.podnet import PodNetwork
from lvr_localcluster.podworker import PodWorker

DEFAULT_GRACE = 30.0


class Kubelet:
    """`Kubelet(api, nodes, state_dir, ...).start()`; `stop()` ends every pod's processes."""

    def __init__(self, api: KubeApi, nodes: list[str], state_dir: Path, marker: str, server: str,
                 kubeconfig_for=None, venv_bin: Path | None = None):
        self.api, self.nodes, self.marker, self.server = api, set(nodes), marker, server
        self.pods_dir, self.pid_dir = state_dir / "pods", state_dir / "pids"
        self.log_file = state_dir / "logs" / "kubelet.log"
        self.venv_bin = venv_bin or Path(sys.executable).parent
        self.kubeconfig_for = kubeconfig_for  # (namespace, serviceaccount, pod) -> kubeconfig path, or None
        self.network = PodNetwork()      # each pod's own address and /etc/hosts (cluster DNS for headless Services)
        self.workers: dict[str, PodWorker] = {}
        self.deleting: dict[str, float] = {}  # uid -> grace, for pods whose deletion we must finish
        self.finished: set[str] = set()  # uids run to the end: never run twice, even on a stale event
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._watch_loop, name="lvr-kubelet", daemon=True)

    def log(self, message: str) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {message}\n")

    def start(self) -> None:
        self.thread.start()

    def stop(self, grace: float = 5.0) -> None:
        """Stop watching, then end every pod's processes (in parallel, SIGKILL after `grace`)."""
        self.stop_event.set()
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.request_stop(min(grace, worker.grace))
        for worker in workers:
            worker.join(grace + 10)

    # -- what pods see ---------------------------------------------------------------------------
    def lookup(self, kind: str, namespace: str, name: str) -> dict | None:
        """Fetch a ConfigMap or Secret for env/volumes; None when it does not exist."""
        try:
            return self.api.get(f"/api/v1/namespaces/{namespace}/{kind}/{name}")
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def base_env(self, pod: dict, pod_dir: Path) -> dict[str, str]:
        """What every container's environment starts from (a container's own env overrides it)."""
        host, _, port = self.server.removeprefix("https://").partition(":")
        env = {"PATH": f"{self.venv_bin}:/usr/local/bin:/usr/bin:/bin", "HOME": str(pod_dir / "home"),
               "TMPDIR": str(pod_dir / "tmp"), "HOSTNAME": pod["spec"].get("hostname") or pod["metadata"]["name"],
               "LANG": "C.UTF-8",
               "PYTHONUNBUFFERED": "1", "KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port,
               "LVR_POD_DIR": str(pod_dir)}
        spec = pod["spec"]
        if self.kubeconfig_for and spec.get("automountServiceAccountToken", True):
            kubeconfig = self.kubeconfig_for(pod["metadata"]["namespace"], spec.get("serviceAccountName", "default"),
                                             pod, pod_dir / "kubeconfig")
            if kubeconfig:
                env["KUBECONFIG"] = str(kubeconfig)
        return env

    # -- watching --------------------------------------------------------------------------------
    def _watch_loop(self) -> None:
        resource_version = ""
        while not self.stop_event.is_set():
            try:
                if not resource_version:
                    resource_version = self._relist()
                for event in self.api.watch("/api/v1/pods", resource_version, self.stop_event,
                                            fieldSelector="spec.nodeName!="):
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        resource_version = ""  # 410 Gone: our version is too old, list again
                        break
                    resource_version = obj["metadata"].get("resourceVersion", resource_version)
                    if event["type"] != "BOOKMARK":
                        self._sync(obj, deleted=event["type"] == "DELETED")
            except Exception as err:  # noqa: BLE001 - apiserver restarts or hiccups: log, back off, resume
                if self.stop_event.is_set():
                    return
                self.log(f"watch error: {err!r}")
                resource_version = ""
                self.stop_event.wait(1.0)

    def _relist(self) -> str:
        listing = self.api.get("/api/v1/pods", fieldSelector="spec.nodeName!=")
        live = {p["metadata"]["uid"] for p in listing["items"]}
        with self.lock:
            gone = [w for uid, w in self.workers.items() if uid not in live]
        for worker in gone:
            worker.request_stop(0.0)
        for pod in listing["items"]:
            self._sync(pod, deleted=False)
        return listing["metadata"]["resourceVersion"]

    def _sync(self, pod: dict, deleted: bool) -> None:
        """React to one pod's latest state: start it, stop it, or finish its deletion."""
        meta, spec = pod["metadata"], pod["spec"]
        if spec.get("nodeName") not in self.nodes:
            return
        uid = meta["uid"]
        with self.lock:
            worker = self.workers.get(uid)
        if deleted:
            with self.lock:
                self.deleting.pop(uid, None)
                self.finished.discard(uid)
            if worker:
                worker.request_stop(0.0)
            return
        if meta.get("deletionTimestamp"):
            grace = float(meta.get("deletionGracePeriodSeconds", spec.get("terminationGracePeriodSeconds",
                                                                          DEFAULT_GRACE)))
            with self.lock:
                first = uid not in self.deleting
                self.deleting[uid] = grace
            if worker:
                worker.request_stop(grace)
            elif first:
                self._finish_deletion(pod)
            return
        if worker is None and (pod.get("status") or {}).get("phase") in (None, "Pending"):
            with self.lock:
                if uid in self.finished or self.stop_event.is_set():
                    return
                worker = self.workers[uid] = PodWorker(self, pod)
            worker.start()

    def worker_done(self, worker: PodWorker) -> None:
        """Called by a worker when its processes are gone; completes a pending graceful deletion."""
        self.network.detach(worker.uid)
        with self.lock:
            self.workers.pop(worker.uid, None)
            self.finished.add(worker.uid)
            deleting = worker.uid in self.deleting
        if deleting and not self.stop_event.is_set():
            self._finish_deletion(worker.pod)

    def _finish_deletion(self, pod: dict) -> None:
        """The kubelet's last word: delete with grace 0 (uid precondition) so the object really goes."""
        meta = pod["metadata"]
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}}
        try:
            self.api.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", body)
        except ApiError as err:
            if err.status not in (404, 409):
                self.log(f"finishing deletion of {meta['namespace']}/{meta['name']}: {err}")
