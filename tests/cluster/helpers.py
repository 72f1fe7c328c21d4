"""Small builders and waits shared by the cluster tests."""

from __future__ import annotations

from kubernetes import client
from kubernetes.client.rest import ApiException

from lvr_localcluster.nodes import GPU_LABELS, GPU_RESOURCE
from lvr_localcluster.pytest_plugin import wait_until

GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


def pod_manifest(name: str, command: list[str], *, gpus: int = 0, restart: str = "Never", **container) -> dict:
    """A one-container pod; with `gpus`, it selects and tolerates gpu-node-0 like our trainer pods do."""
    main = {"name": "main", "image": "longvideo-rl-trainer:dev", "command": command, **container}
    spec: dict = {"restartPolicy": restart, "containers": [main], "terminationGracePeriodSeconds": 5}
    if gpus:
        main["resources"] = {"limits": {GPU_RESOURCE: gpus, "cpu": "2"}}
        spec["nodeSelector"] = {"nvidia.com/gpu.product": GPU_LABELS["nvidia.com/gpu.product"]}
        spec["tolerations"] = [GPU_TOLERATION]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def python(code: str) -> list[str]:
    return ["python", "-c", code]


def wait_phase(core: client.CoreV1Api, namespace: str, name: str, phases: tuple[str, ...], timeout: float = 60):
    """The pod once its phase is one of `phases`."""
    def check():
        pod = core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase in phases else None
    return wait_until(check, timeout, f"pod {namespace}/{name} to reach {phases}")


def wait_gone(read, *args, timeout: float = 60, what: str = "object") -> None:
    """Wait until `read(*args)` answers 404."""
    def gone():
        try:
            read(*args)
        except ApiException as err:
            return err.status == 404
        return False
    wait_until(gone, timeout, f"{what} to be deleted")


def pid_alive(pid: int) -> bool:
    """True if process `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
