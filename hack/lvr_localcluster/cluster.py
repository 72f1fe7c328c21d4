"""LocalCluster: the whole local Kubernetes (control plane, two nodes, kubelet stand-in) in one object.

    with LocalCluster(tmp_dir) as cluster:
        os.environ["KUBECONFIG"] = str(cluster.kubeconfig)

Used by the pytest plugin (session fixture) and by `python -m lvr_localcluster serve` behind
`make cluster-up`. Every process it starts is in its own process group, recorded under
`<state_dir>/pids`, and ended by `stop()`, by an atexit hook, or by the next start in the same directory.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from lvr_localcluster import procs, realnode
from lvr_localcluster.controlplane import KUBE_VERSION, ControlPlane, kube_bin_dir, remove_tree
from lvr_localcluster.kubeapi import ApiError, KubeApi
from lvr_localcluster.kubelet import Kubelet
from lvr_localcluster.nodes import Heartbeat, register_nodes
from lvr_localcluster.clusterdns import ClusterDns
from lvr_localcluster.realnode import RealNodes

TOKEN_SECONDS = 24 * 3600


class LocalCluster:
    """A running local cluster rooted at `state_dir` (wiped at start: etcd data, pods, logs, keys)."""

    def __init__(self, state_dir: str | Path, *, build: bool = True, real_nodes: bool | None = None):
        self.state_dir = Path(state_dir).resolve()
        self.build = build
        self.real_nodes = os.environ.get("LVR_NODES") == "real" if real_nodes is None else real_nodes
        self.real: RealNodes | None = None
        self.dns: ClusterDns | None = None
        self.marker = f"lvr-{uuid.uuid4().hex[:12]}"
        self.control: ControlPlane | None = None
        self.api: KubeApi | None = None
        self.heartbeat: Heartbeat | None = None
        self.kubelet: Kubelet | None = None
        self.nodes: list[str] = []
        self.reaper: subprocess.Popen | None = None  # see reaper.py: cleans up if we die with kill -9

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (group system:masters)."""
        return self.state_dir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        return self.control.server if self.control else ""

    def start(self, timeout: float = 90) -> LocalCluster:
        """Start everything; returns when nodes are Ready and namespace `default` can take pods."""
        t0 = time.monotonic()
        bin_dir = kube_bin_dir(build=self.build)
        procs.kill_recorded(self.state_dir / "pids")  # leftovers of a crashed earlier run in this directory
        for sub in ("etcd", "pods", "pki", "logs", "pids"):
            remove_tree(self.state_dir / sub)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)
        self.reaper = subprocess.Popen([sys.executable, "-m", "lvr_localcluster.reaper", str(self.state_dir / "pids")],
                                       start_new_session=True, stdin=subprocess.DEVNULL)
        try:
            if self.real_nodes:
                self._start_real(bin_dir, timeout)
                self.wait_namespace_ready("default", timeout - (time.monotonic() - t0))
                self.start_seconds = time.monotonic() - t0
                return self
            self.control = ControlPlane(self.state_dir, bin_dir, self.marker)
            self.control.start(timeout)
            self.api = KubeApi(self.server, self.control.admin_token, str(self.control.pki.ca_cert))
            self.nodes = register_nodes(self.api, KUBE_VERSION)
            self.heartbeat = Heartbeat(self.api, self.nodes)
            self.heartbeat.start()
            self.kubelet = Kubelet(self.api, self.nodes, self.state_dir, self.marker, self.server,
                                   kubeconfig_for=self._pod_kubeconfig)
            self.kubelet.start()
            self.wait_namespace_ready("default", timeout - (time.monotonic() - t0))
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _start_real(self, bin_dir: Path, timeout: float) -> None:
        """The control plane advertised on the pods' bridge, then real kubelets on containerd (realnode.py)."""
        gaps = realnode.missing(bin_dir)
        if gaps:
            raise RuntimeError("the local cluster's real nodes need: " + "; ".join(gaps))
        realnode.ensure_bridge()
        specs = realnode.default_specs()
        self.control = ControlPlane(self.state_dir, bin_dir, self.marker, advertise_address=realnode.NODE_IP,
                                    identities=realnode.node_identities(specs))
        self.control.start(timeout)
        self.api = KubeApi(self.server, self.control.admin_token, str(self.control.pki.ca_cert))
        self.dns = ClusterDns(self.state_dir, realnode.NODE_IP, self.marker)
        self.dns.start(self.api)
        self.real = RealNodes(self.state_dir, bin_dir, self.marker, specs)
        self.real.start(self.control, realnode.image_archives())
        self.real.advertise_gpus(self.api, timeout)
        self.real.wait_ready(self.api, timeout)
        self.nodes = [s.name for s in specs]

    def stop(self) -> None:
        """End pods, heartbeats and the control plane; then anything still recorded under pids/."""
        if self.real:
            self.real.stop()
            self.real = None
        if self.dns:
            self.dns.stop()
            self.dns = None
        if self.kubelet:
            self.kubelet.stop()
        if self.heartbeat:
            self.heartbeat.stop()
        if self.control:
            self.control.stop()
        procs.kill_recorded(self.state_dir / "pids")
        if self.reaper is not None:
            self.reaper.terminate()
            self.reaper.wait()
        self.kubelet = self.heartbeat = self.control = self.reaper = None
        atexit.unregister(self.stop)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- namespaces and identities -----------------------------------------------------------------
    def wait_namespace_ready(self, namespace: str, timeout: float = 120) -> None:
        """Block until the namespace's `default` ServiceAccount has its token: before that, the
        ServiceAccount admission plugin rejects every pod created there."""
        deadline = time.monotonic() + max(timeout, 1)
        while time.monotonic() < deadline:
            try:
                if self.api.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/default").get("secrets"):
                    return
            except ApiError as err:
                if err.status != 404:
                    raise
            time.sleep(0.2)
        raise TimeoutError(f"namespace {namespace}: ServiceAccount default got no token within {timeout:.0f}s; "
                           f"is kube-controller-manager running? log: {self.state_dir / 'logs'}")

    def create_namespace(self, name: str, labels: dict | None = None) -> str:
        """Create namespace `name` (idempotent) and wait until it accepts pods."""
        self.api.ensure("/api/v1/namespaces", {"metadata": {"name": name, "labels": labels or {}}})
        self.wait_namespace_ready(name)
        return name

    def service_account_token(self, namespace: str, name: str, *, create: bool = True,
                              bound_pod: dict | None = None) -> str:
        """A bearer token for ServiceAccount namespace/name (TokenRequest API), creating the SA if asked."""
        if create:
            self.api.ensure(f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": name}})
        spec: dict = {"expirationSeconds": TOKEN_SECONDS}
        if bound_pod is not None:
            meta = bound_pod["metadata"]
            spec["boundObjectRef"] = {"kind": "Pod", "apiVersion": "v1", "name": meta["name"], "uid": meta["uid"]}
        answer = self.api.create(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", {"spec": spec})
        return answer["status"]["token"]

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path | None = None) -> Path:
        """A kubeconfig that acts as ServiceAccount namespace/name (what RBAC tests and operators use)."""
        token = self.service_account_token(namespace, name)
        path = path or self.state_dir / "identities" / f"{namespace}.{name}.kubeconfig"
        return self.control.write_kubeconfig(path, token, f"system:serviceaccount:{namespace}:{name}", namespace)

    def _pod_kubeconfig(self, namespace: str, service_account: str, pod: dict, path: Path) -> Path | None:
        """KUBECONFIG for a pod's processes: a token bound to the pod, as the projected token would be."""
        try:
            token = self.service_account_token(namespace, service_account, create=False, bound_pod=pod)
        except ApiError:
            return None
        user = f"system:serviceaccount:{namespace}:{service_account}"
        return self.control.write_kubeconfig(path, token, user, namespace)

    # -- pods' local side --------------------------------------------------------------------------
    def pod_dir(self, namespace: str, name: str) -> Path:
        """The newest local directory of pod namespace/name (volumes/, logs/, work/, home/, tmp/)."""
        dirs = sorted((self.state_dir / "pods" / namespace).glob(f"{name}.*"), key=lambda p: p.stat().st_mtime)
        if not dirs:
            raise FileNotFoundError(f"pod {namespace}/{name} never ran on the local kubelet "
                                    f"(no {self.state_dir}/pods/{namespace}/{name}.*); is it scheduled?")
        return dirs[-1]

    def pod_log(self, namespace: str, name: str, container: str | None = None) -> str:
        """The log of one container of pod namespace/name (default: the alphabetically first container)."""
        logs = self.pod_dir(namespace, name) / "logs"
        path = logs / f"{container}.log" if container else min(logs.glob("*.log"), default=logs / "missing.log")
        return path.read_text(errors="replace") if path.exists() else ""
