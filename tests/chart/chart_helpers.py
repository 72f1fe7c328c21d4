"""Render the chart with the real helm and pick objects out of the result (used by the chart suites)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "longvideo-rl"


def helm_run(helm: str, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run helm; on failure (with check) raise with its stderr, which is what a user would read."""
    proc = subprocess.run([helm, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout[-2000:]}")
    return proc


def values_file(values: dict[str, Any]) -> str:
    """Values as a temporary YAML file (what `helm -f` takes); the caller's process owns its removal."""
    f = tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="lvr-values-", delete=False)
    with f:
        yaml.safe_dump(values, f)
    return f.name


def render_chart(helm: str, values: dict[str, Any], release: str = "lvr", namespace: str = "lvr-system",
                 check: bool = True) -> list[dict[str, Any]] | subprocess.CompletedProcess:
    path = values_file(values)
    try:
        proc = helm_run(helm, "template", release, str(CHART), "--namespace", namespace, "-f", path, check=check)
    finally:
        Path(path).unlink()
    if not check:
        return proc
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def find(docs: list[dict], kind: str, name: str | None = None, namespace: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
            and (namespace is None or d["metadata"].get("namespace") == namespace)]


def one(docs: list[dict], kind: str, name: str | None = None, namespace: str | None = None) -> dict:
    found = find(docs, kind, name, namespace)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def operator_container(docs: list[dict]) -> dict:
    dep = one(docs, "Deployment", "lvr-longvideo-rl-operator")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    return container


def args_map(container: dict) -> dict[str, list[str]]:
    """`--flag=value` arguments as flag -> values (repeatable flags keep every value); bare flags -> []."""
    out: dict[str, list[str]] = {}
    for arg in container["args"]:
        flag, _, value = arg.partition("=")
        out.setdefault(flag, [])
        if value:
            out[flag].append(value)
    return out


# -- on the local cluster --------------------------------------------------------------------------------
def helm_release(helm: str, kubeconfig: str, action: str, release: str, namespace: str,
                 values: dict[str, Any] | None = None) -> str:
    """`helm install|upgrade|uninstall` against the local cluster; returns helm's stdout."""
    args = [action, release]
    if action != "uninstall":
        args.append(str(CHART))
    args += ["--namespace", namespace, "--kubeconfig", kubeconfig, "--wait", "--timeout", "120s"]
    path = values_file(values) if values is not None else None
    try:
        return helm_run(helm, *args, *(["-f", path] if path else []), timeout=180).stdout
    finally:
        if path:
            Path(path).unlink()


def ready_operator_pod(api, namespace: str, deployment: str) -> dict | None:
    """The operator's single Running+Ready pod once the Deployment is Available and rolled out, else None."""
    dep = api.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{deployment}")
    status = dep.get("status") or {}
    available = any(c["type"] == "Available" and c["status"] == "True" for c in status.get("conditions") or [])
    if not (available and status.get("updatedReplicas") == status.get("replicas") == 1
            and status.get("observedGeneration") == dep["metadata"]["generation"]):
        return None
    selector = ",".join(f"{k}={v}" for k, v in dep["spec"]["selector"]["matchLabels"].items())
    pods = api.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector)["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    if len(live) != 1 or live[0]["status"].get("phase") != "Running":
        return None
    ready = all(c.get("ready") for c in live[0]["status"].get("containerStatuses") or [{}])
    return live[0] if ready else None


def call_status(fn, *args, **kwargs) -> int:
    """HTTP status of one kubernetes-client call: 200 done (or dry-run accepted), 403 refused by RBAC,
    404 allowed but absent."""
    from kubernetes.client.rest import ApiException

    try:
        fn(*args, **kwargs)
        return 200
    except ApiException as err:
        return err.status


def exists(api, path: str) -> bool:
    """Whether `path` exists, through the admin KubeApi."""
    from lvr_localcluster.kubeapi import ApiError

    try:
        api.get(path)
        return True
    except ApiError as err:
        if err.status == 404:
            return False
        raise
