"""One worker pod per node: the torchrun trainer container."""

from __future__ import annotations

from typing import Any

from lvr_operator.api.jobs import JobSpecBase
from lvr_operator.manifests.common import (LABEL_ATTEMPT, LABEL_RANK, LABEL_ROLE, child_meta, config_name,
                                           name_of, service_name, trainer_account_name, worker_name)
from lvr_operator.manifests.job import CONFIG_DIR, TRAINER, launch_command, rendezvous_env, resources, s3_env
from lvr_operator.settings import OperatorSettings


def _s3(spec: JobSpecBase, dataset_s3: Any) -> Any:
    return spec.cache.s3 or dataset_s3


def trainer_container(job: dict[str, Any], spec: JobSpecBase, rank: int, settings: OperatorSettings,
                      resume_from: str | None, dataset_s3: Any = None) -> dict[str, Any]:
    s3 = _s3(spec, dataset_s3)
    env = rendezvous_env(job, spec, rank, settings)
    env += s3_env(s3.credentials_secret if s3 else None, s3.endpoint if s3 else None)
    if resume_from:
        env.append({"name": "LVR_RESUME_FROM", "value": resume_from})
    container: dict[str, Any] = {
        "name": TRAINER, "image": spec.image or settings.trainer_image,
        "command": launch_command(job, spec, rank, settings), "env": env,
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                         {"name": "dshm", "mountPath": "/dev/shm"}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if rank == 0:
        container["ports"] = [{"name": "rendezvous", "containerPort": settings.master_port}]
    if res := resources(spec):
        container["resources"] = res
    return container


def worker_pod(job: dict[str, Any], spec: JobSpecBase, rank: int, attempt: int, settings: OperatorSettings,
               resume_from: str | None = None, dataset_s3: Any = None) -> dict[str, Any]:
    """Worker `rank` of the gang (attempt = restarts so far; stale attempts are recognised by label)."""
    name = name_of(job)
    labels = {LABEL_ROLE: "worker", LABEL_RANK: str(rank), LABEL_ATTEMPT: str(attempt)}
    # A rollout sidecar joins here once the rollout server exists (issue 18); until then the trainer
    # config's `rollout` section runs in process and admission refuses `mode: sidecar`.
    containers = [trainer_container(job, spec, rank, settings, resume_from, dataset_s3)]
    place = spec.placement
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never", "hostname": worker_name(name, rank), "subdomain": service_name(name),
        "serviceAccountName": trainer_account_name(name), "containers": containers,
        "volumes": [{"name": "config", "configMap": {"name": config_name(name)}},
                    {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.resources.shm_size}}],
        "tolerations": place.effective_tolerations(),
    }
    if selector := place.effective_node_selector():
        pod_spec["nodeSelector"] = selector
    if place.affinity:
        pod_spec["affinity"] = place.affinity
    if place.priority_class_name:
        pod_spec["priorityClassName"] = place.priority_class_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": child_meta(job, worker_name(name, rank), labels),
            "spec": pod_spec}
