"""Names, labels and owner references shared by every builder; deterministic, so re-creation is idempotent."""

from __future__ import annotations

import re
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
MAX_LABEL = 63                            # a DNS label, a label value
MAX_RANKS = 64                            # ResourcesSpec.nodes' bound: worker ranks 0-63
# A DNS-1035 label (RFC 1035): what a Service name must be; a job's children start with the job's name
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# Child-name infix per job kind: an SFTJob and an RLJob of the same name never share a child, and no
# `<name>-sft-...` can equal an `<other>-rl-...` name (their suffixes differ at the same distance from the end)
_KIND_TAG = {"SFTJob": "sft", "RLJob": "rl"}

# Kueue's plain-pod contract (kueue.sigs.k8s.io, "Run Plain Pods": a group admitted together)
KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
KUEUE_GROUP = "kueue.x-k8s.io/pod-group-name"
KUEUE_GROUP_COUNT = "kueue.x-k8s.io/pod-group-total-count"
KUEUE_GATE = "kueue.x-k8s.io/admission"   # the scheduling gate Kueue's webhook puts on the pods it queues
# scheduler-plugins coscheduling: the PodGroup CRD and the pod label naming the group
PODGROUP_API, PODGROUP_VERSION, PODGROUP_PLURAL = "scheduling.x-k8s.io", "v1alpha1", "podgroups"
PODGROUP_LABEL = "scheduling.x-k8s.io/pod-group"


# Pod Security Standards `restricted`: the pods' user is the image's own numeric USER (65532 in images/),
# which the kubelet refuses to run as root; no privilege escalation, no capabilities, the runtime's seccomp.
POD_SECURITY = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def restricted(pod_spec: dict[str, Any]) -> dict[str, Any]:
    """`pod_spec` with the `restricted` security context on the pod and on every container that has none."""
    pod_spec["securityContext"] = {**POD_SECURITY, **(pod_spec.get("securityContext") or {})}
    for c in pod_spec.get("initContainers", []) + pod_spec.get("containers", []):
        c["securityContext"] = {**CONTAINER_SECURITY, **(c.get("securityContext") or {})}
    return pod_spec


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


def _prefix(kind: str, job: str) -> str:
    return f"{job}-{_KIND_TAG[kind]}"


def pod_group_name(kind: str, job: str) -> str:
    return f"{_prefix(kind, job)}-gang"


def worker_name(kind: str, job: str, rank: int) -> str:
    """The worker pod's name and host name (a DNS-1123 label)."""
    return f"{_prefix(kind, job)}-worker-{rank}"


def service_name(kind: str, job: str) -> str:
    """The headless Service: its name must be a DNS-1035 label."""
    return f"{_prefix(kind, job)}-workers"


def config_name(kind: str, job: str) -> str:
    return f"{_prefix(kind, job)}-config"


def trainer_account_name(kind: str, job: str) -> str:
    return f"{_prefix(kind, job)}-trainer"


def _job_children(kind: str) -> list[tuple[str, str]]:
    """(what, longest name) of each child a job named '' gets, each of which must fit a DNS label."""
    return [("worker pod host name", worker_name(kind, "", MAX_RANKS - 1)),
            ("headless Service", service_name(kind, "")), ("ConfigMap", config_name(kind, "")),
            ("ServiceAccount/Role", trainer_account_name(kind, "")), ("PodGroup", pod_group_name(kind, ""))]


def max_name_length(kind: str) -> int:
    """The longest metadata.name of `kind` whose every child name and label value fits in 63 characters."""
    if kind not in _KIND_TAG:                # LongVideoDataset: its name is a label value of its pods
        return MAX_LABEL
    return MAX_LABEL - max(len(suffix) for _, suffix in _job_children(kind))


def name_problem(kind: str, name: str) -> str | None:
    """Why `name` cannot name a `kind` (its children would be refused), or None. Pure; the CRD's schema
    says the same (crdgen), for API servers that validate metadata.name against it."""
    limit = max_name_length(kind)
    if kind not in _KIND_TAG:
        if len(name) > limit:
            return (f"metadata.name '{name}' is {len(name)} characters; it becomes the value of label "
                    f"{LABEL_OWNER} on the preparation pod, which is at most {limit}. Recreate the "
                    f"{kind} with a shorter name")
        return None
    if len(name) > limit:
        what, suffix = max(_job_children(kind), key=lambda c: len(c[1]))
        return (f"metadata.name '{name}' is {len(name)} characters; the {what} '{name}{suffix}' must be at most "
                f"{MAX_LABEL} (a DNS label), so the name may have at most {limit}. Recreate the {kind} with a "
                "shorter name")
    if not re.fullmatch(DNS1035_LABEL.strip("^$"), name):
        return (f"metadata.name '{name}' cannot name the headless Service '{service_name(kind, name)}': a Service "
                "name is a DNS-1035 label (lower-case letters, digits and '-', starting with a letter, no '.'). "
                f"Recreate the {kind} with a name such as '{_suggest(name)}'")
    return None


def _suggest(name: str) -> str:
    fixed = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-") or "job"
    return fixed if fixed[0].isalpha() else f"job-{fixed}"


def prep_pod_name(dataset: str, generation: int, attempt: int) -> str:
    return f"{dataset}-prep-g{generation}-{attempt}"
