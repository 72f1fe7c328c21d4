"""Gang admission: how many workers of a given size the cluster can place right now.

Counted per node: allocatable nvidia.com/gpu minus the requests of pods on it that have not finished;
GPU pods not yet bound are taken off the total. Nodes must be Ready, schedulable, match the
nodeSelector and tolerate every NoSchedule/NoExecute taint. (Affinity is left to the scheduler.)
"""

from __future__ import annotations

from typing import Any

from lvr_operator.api.common import GPU_RESOURCE, GROUP


def _qty(value: Any) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return 0


def _container_gpus(c: dict[str, Any]) -> int:
    res = c.get("resources") or {}
    return _qty((res.get("requests") or {}).get(GPU_RESOURCE) or (res.get("limits") or {}).get(GPU_RESOURCE))


def pod_gpus(pod: dict[str, Any]) -> int:
    """The pod's effective GPU request, as the scheduler computes it: its containers plus its native sidecars
    (init containers with restartPolicy Always, which run beside them), or the largest one-off init container
    plus the sidecars started before it, whichever is more."""
    spec = pod.get("spec") or {}
    sidecars = peak_init = 0
    for c in spec.get("initContainers") or []:
        if c.get("restartPolicy") == "Always":
            sidecars += _container_gpus(c)
        else:
            peak_init = max(peak_init, sidecars + _container_gpus(c))
    return max(sum(_container_gpus(c) for c in spec.get("containers") or []) + sidecars, peak_init)


def tolerates(taint: dict[str, Any], tolerations: list[dict[str, Any]]) -> bool:
    if taint.get("effect") not in ("NoSchedule", "NoExecute"):
        return True
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint.get("effect"):
            continue
        if t.get("operator") == "Exists" and (not t.get("key") or t["key"] == taint.get("key")):
            return True
        if t.get("key") == taint.get("key") and (t.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def node_fits(node: dict[str, Any], selector: dict[str, str], tolerations: list[dict[str, Any]]) -> bool:
    labels = node["metadata"].get("labels") or {}
    if any(labels.get(k) != v for k, v in selector.items()):
        return False
    spec, status = node.get("spec") or {}, node.get("status") or {}
    if spec.get("unschedulable"):
        return False
    if not all(tolerates(t, tolerations) for t in spec.get("taints") or []):
        return False
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    return ready is not None and ready.get("status") == "True"


def gpu_holders(pods: list[dict[str, Any]], limit: int = 3, namespace: str | None = None) -> list[str]:
    """Who holds GPUs now, most first: `SFTJob ns/name (2 pods, 16 GPUs)` for our jobs' pods, `pod ns/name`
    for anyone else's; at most `limit` entries. With `namespace` (the asking job's), holders elsewhere are
    counted but not named: a job's status is readable by its namespace's users, not the cluster's."""
    held: dict[str, list[int]] = {}
    for p in pods:
        gpus = pod_gpus(p)
        if not gpus or (p.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        meta = p.get("metadata") or {}
        labels = meta.get("labels") or {}
        ns = meta.get("namespace", "")
        owner = labels.get(f"{GROUP}/owner")
        if namespace is not None and ns != namespace:
            key = "pods in other namespaces"
        else:
            key = (f"{_KINDS.get(labels.get(f'{GROUP}/kind', ''), 'job')} {ns}/{owner}" if owner
                   else f"pod {ns}/{meta.get('name', '?')}")
        held.setdefault(key, []).append(gpus)
    ranked = sorted(held.items(), key=lambda kv: -sum(kv[1]))[:limit]
    return [f"{key} ({len(v)} pod{'s' if len(v) > 1 else ''}, {sum(v)} GPUs)" for key, v in ranked]


_KINDS = {"sftjob": "SFTJob", "rljob": "RLJob", "longvideodataset": "LongVideoDataset"}


def free_slots(nodes: list[dict[str, Any]], pods: list[dict[str, Any]], gpus_per_worker: int,
               selector: dict[str, str], tolerations: list[dict[str, Any]]) -> int | None:
    """Workers of `gpus_per_worker` GPUs that fit now; None when the request is CPU-only (not gated)."""
    if gpus_per_worker <= 0:
        return None
    used: dict[str, int] = {}
    unbound = 0
    for p in pods:
        if (p.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        node = (p.get("spec") or {}).get("nodeName")
        if node:
            used[node] = used.get(node, 0) + pod_gpus(p)
        else:
            unbound += pod_gpus(p)
    slots = 0
    for n in nodes:
        if node_fits(n, selector, tolerations):
            free = _qty(((n.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE)) - used.get(
                n["metadata"]["name"], 0)
            slots += max(free, 0) // gpus_per_worker
    return max(slots - -(-unbound // gpus_per_worker), 0)
