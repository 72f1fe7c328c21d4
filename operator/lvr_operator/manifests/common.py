"""Names, labels and owner references shared by every builder; deterministic, so re-creation is idempotent."""

from __future__ import annotations

from typing import Any

from lvr_operator.api.common import GROUP

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "lvr-operator"
LABEL_KIND = f"{GROUP}/kind"
LABEL_OWNER = f"{GROUP}/owner"          # the owning CR's name
LABEL_ROLE = f"{GROUP}/role"            # worker | preprocess
LABEL_RANK = f"{GROUP}/node-rank"
LABEL_ATTEMPT = f"{GROUP}/attempt"      # gang restarts at creation time; stale attempts are deleted
LABEL_GENERATION = f"{GROUP}/generation"
ANNOTATION_PROGRESS = f"{GROUP}/progress"  # JSON that rank 0 patches onto its own pod
MAX_NAME = 63 - len("-worker-99")         # pod names double as hostnames (DNS labels)

# Kueue's plain-pod contract (kueue.sigs.k8s.io, "Run Plain Pods": a group admitted together)
KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
KUEUE_GROUP = "kueue.x-k8s.io/pod-group-name"
KUEUE_GROUP_COUNT = "kueue.x-k8s.io/pod-group-total-count"
KUEUE_GATE = "kueue.x-k8s.io/admission"   # the scheduling gate Kueue's webhook puts on the pods it queues
# scheduler-plugins coscheduling: the PodGroup CRD and the pod label naming the group
PODGROUP_API, PODGROUP_VERSION, PODGROUP_PLURAL = "scheduling.x-k8s.io", "v1alpha1", "podgroups"
PODGROUP_LABEL = "scheduling.x-k8s.io/pod-group"


def meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def name_of(obj: dict[str, Any]) -> str:
    return meta(obj)["name"]


def namespace_of(obj: dict[str, Any]) -> str:
    return meta(obj).get("namespace") or "default"


def owner_labels(owner: dict[str, Any]) -> dict[str, str]:
    """Selects every child of `owner` (pods, services, configmaps, RBAC objects)."""
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_KIND: owner["kind"].lower(), LABEL_OWNER: name_of(owner)}


def owner_selector(owner: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in owner_labels(owner).items())


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": name_of(owner),
            "uid": meta(owner)["uid"], "controller": True, "blockOwnerDeletion": True}


def child_meta(owner: dict[str, Any], name: str, extra_labels: dict[str, str] | None = None,
               annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """metadata of a child: deterministic name, owner's namespace, labels and controller reference."""
    out: dict[str, Any] = {"name": name, "namespace": namespace_of(owner),
                           "labels": {**owner_labels(owner), **(extra_labels or {})},
                           "ownerReferences": [owner_reference(owner)]}
    if annotations:
        out["annotations"] = annotations
    return out


def pod_group_name(job: str) -> str:
    return f"{job}-gang"


def worker_name(job: str, rank: int) -> str:
    return f"{job}-worker-{rank}"


def service_name(job: str) -> str:
    return f"{job}-workers"


def config_name(job: str) -> str:
    return f"{job}-config"


def trainer_account_name(job: str) -> str:
    return f"{job}-trainer"


def prep_pod_name(dataset: str, generation: int, attempt: int) -> str:
    return f"{dataset}-prep-g{generation}-{attempt}"
