"""The three fake machines of the local cluster and the heartbeats that keep them Ready.

`gpu-node-0` and `gpu-node-1` are shaped like 8xA100-80GB nodes as GPU Feature Discovery and the NVIDIA
device plugin would label and size them; `cpu-node-0` has no GPU. Their status is real API state: the real scheduler
places pods by it, and the real node-lifecycle controller would taint them unreachable (then evict their
pods) if `Heartbeat` stopped renewing their Leases and Ready conditions.
"""

from __future__ import annotations

import datetime
import threading

from lvr_localcluster.kubeapi import STRATEGIC, ApiError, KubeApi

GPU_NODE = "gpu-node-0"
GPU_NODE_2 = "gpu-node-1"         # a second 8-GPU node: multi-node gangs, and jobs competing for nodes
CPU_NODE = "cpu-node-0"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
GPU_LABELS = {
    "nvidia.com/gpu.present": "true",
    "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
    "nvidia.com/gpu.count": "8",
    "nvidia.com/gpu.memory": "81920",
    "nvidia.com/gpu.family": "ampere",
    "nvidia.com/gpu.machine": "DGX-A100",
    "nvidia.com/cuda.driver.major": "535",
    "node.kubernetes.io/instance-type": "p4de.24xlarge",
}
LEASE_SECONDS = 40
HEARTBEAT_SECONDS = 10.0


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_manifest(name: str, gpus: int) -> dict:
    """Node object (spec + metadata); its capacity goes in by the status subresource, see node_status."""
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
              "lvr.dev/local-node": "true", **(GPU_LABELS if gpus else {})}
    spec = {"taints": [GPU_TAINT]} if gpus else {}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}, "spec": spec}


def node_status(name: str, gpus: int, cpu: str, memory: str, version: str) -> dict:
    resources = {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "1000Gi"}
    if gpus:
        resources[GPU_RESOURCE] = str(gpus)
    return {"capacity": resources, "allocatable": resources,
            "conditions": ready_conditions(),
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {"machineID": name, "systemUUID": name, "bootID": name, "kernelVersion": "local",
                         "osImage": "lvr local kubelet stand-in", "containerRuntimeVersion": "local://processes",
                         "kubeletVersion": f"v{version}", "kubeProxyVersion": f"v{version}",
                         "operatingSystem": "linux", "architecture": "amd64"}}


def ready_conditions() -> list[dict]:
    """The node conditions a healthy kubelet reports; refreshed on every heartbeat."""
    stamp = now()

    def cond(kind: str, status: str, reason: str, message: str) -> dict:
        return {"type": kind, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}

    return [cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            cond("Ready", "True", "KubeletReady", "lvr kubelet stand-in is posting ready status")]


NODE_SHAPES = {GPU_NODE: dict(gpus=8, cpu="96", memory="1120Gi"), GPU_NODE_2: dict(gpus=8, cpu="96", memory="1120Gi"),
               CPU_NODE: dict(gpus=0, cpu="16", memory="64Gi")}


def register_nodes(api: KubeApi, version: str) -> list[str]:
    """Create the nodes (idempotent) and post their status; return their names."""
    for name, shape in NODE_SHAPES.items():
        api.ensure("/api/v1/nodes", node_manifest(name, shape["gpus"]))
        api.patch(f"/api/v1/nodes/{name}/status", {"status": node_status(name, version=version, **shape)})
    return list(NODE_SHAPES)


class Heartbeat(threading.Thread):
    """Renew each node's Lease and Ready condition every HEARTBEAT_SECONDS, as a kubelet does."""

    def __init__(self, api: KubeApi, nodes: list[str]):
        super().__init__(name="lvr-node-heartbeat", daemon=True)
        self.api, self.nodes, self.stop_event = api, nodes, threading.Event()
        self.errors = 0

    def beat(self) -> None:
        for name in self.nodes:
            self._renew_lease(name)
            self.api.patch(f"/api/v1/nodes/{name}/status", {"status": {"conditions": ready_conditions()}},
                           content_type=STRATEGIC)

    def _renew_lease(self, name: str) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
        spec = {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": micro_now()}
        try:
            self.api.patch(path, {"spec": spec})
        except ApiError as err:
            if err.status != 404:
                raise
            self.api.create("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                            {"metadata": {"name": name}, "spec": spec})

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - a missed beat is retried; the node has 40 s of slack
                self.errors += 1
            self.stop_event.wait(HEARTBEAT_SECONDS)

    def stop(self) -> None:
        self.stop_event.set()
