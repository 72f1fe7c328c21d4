"""One worker pod per node: the torchrun trainer container, and an RLJob's rollout sidecar."""

from __future__ import annotations

from typing import Any

from lvr_operator.api.common import GPU_RESOURCE
from lvr_operator.api.jobs import JobSpecBase, RLJobSpec
from lvr_operator.manifests.common import (KUEUE_GATE, LABEL_ATTEMPT, LABEL_RANK, LABEL_ROLE, child_meta, config_name,
                                           name_of, restricted, service_name, trainer_account_name, worker_name)
from lvr_operator.manifests.job import (CONFIG_DIR, CONFIG_FILE, TERMINATION_LOG, TRAINER, gang_labels,
                                        launch_command, rendezvous_env, resources, s3_env)
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


ROLLOUT = "rollout"


def rollout_container(spec: RLJobSpec, settings: OperatorSettings, dataset_s3: Any = None) -> dict[str, Any]:
    """`lvr rollout-server` on the pod's loopback, loading the job's model from the same trainer config
    (and S3 credentials) as the trainer; its GPUs come from the device plugin, apart from the trainer's.
    The startup probe holds a native sidecar's pod back until the model is loaded; the trainer also waits
    for /health itself (rollout.startup_timeout_s), which is what counts on older Kubernetes."""
    r = spec.rollout
    s3 = _s3(spec, dataset_s3)
    image = r.image or (settings.rollout_image if r.engine == "vllm" else spec.image or settings.trainer_image)
    # An exec probe: the server listens on the pod's loopback only (its /weights and /shutdown are for the
    # trainer beside it), which an httpGet probe from the node could not reach.
    probe = f"import urllib.request as u; u.urlopen('http://127.0.0.1:{r.port}/health', timeout=3)"
    health = {"exec": {"command": ["python", "-c", probe]}, "periodSeconds": 5, "timeoutSeconds": 5}
    container: dict[str, Any] = {
        "name": ROLLOUT, "image": image,
        "command": ["python", "-m", "lvr_trainer.cli", "rollout-server", "--config", CONFIG_FILE,
                    "--engine", r.engine, "--port", str(r.port)]
                   # a regular container gets SIGTERM with the trainer, which needs it for its last step
                   # (its drain ends before the grace period does, even if the trainer sends no /shutdown)
                   + ([] if settings.native_sidecars else [
                       "--drain-on-sigterm", "--drain-timeout-s",
                       str(max(5, spec.run_policy.termination_grace_period_seconds - 15))]),
        "env": [{"name": "LVR_TERMINATION_LOG", "value": TERMINATION_LOG},
                *s3_env(s3.credentials_secret if s3 else None, s3.endpoint if s3 else None)],
        "ports": [{"name": ROLLOUT, "containerPort": r.port}],
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                         {"name": "dshm", "mountPath": "/dev/shm"}],
        "startupProbe": {**health, "failureThreshold": 180},      # up to 15 min to load a model
        "readinessProbe": health,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    limits = {GPU_RESOURCE: r.server_gpus(spec.resources.gpus_per_node), "memory": r.memory}
    if limits := {k: v for k, v in limits.items() if v}:
        container["resources"] = {"limits": limits, "requests": dict(limits)}
    return container


def worker_pod(job: dict[str, Any], spec: JobSpecBase, rank: int, attempt: int, settings: OperatorSettings,
               resume_from: str | None = None, dataset_s3: Any = None) -> dict[str, Any]:
    """Worker `rank` of the gang (attempt = restarts + preemptions so far; stale attempts are recognised by
    label)."""
    name, kind = name_of(job), job["kind"]
    gang, annotations = gang_labels(job, spec)
    labels = {LABEL_ROLE: "worker", LABEL_RANK: str(rank), LABEL_ATTEMPT: str(attempt), **gang}
    containers = [trainer_container(job, spec, rank, settings, resume_from, dataset_s3)]
    init: list[dict[str, Any]] = []
    if isinstance(spec, RLJobSpec) and spec.rollout.mode == "sidecar":
        sidecar = rollout_container(spec, settings, dataset_s3)
        if settings.native_sidecars:     # started first, stopped after the trainer; the pod completes
            init.append({**sidecar, "restartPolicy": "Always"})
        else:                            # a regular container: the trainer POSTs /shutdown when it ends
            containers.append(sidecar)
    place = spec.placement
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never", "terminationGracePeriodSeconds": spec.run_policy.termination_grace_period_seconds, "hostname": worker_name(kind, name, rank), "subdomain": service_name(kind, name),
        "serviceAccountName": trainer_account_name(kind, name), "containers": containers,
        "automountServiceAccountToken": True,    # rank 0 patches its progress annotation onto its own pod
        "volumes": [{"name": "config", "configMap": {"name": config_name(kind, name)}},
                    {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.resources.shm_size}}],
        "tolerations": place.effective_tolerations(),
    }
    if init:
        pod_spec["initContainers"] = init
    if selector := place.effective_node_selector():
        pod_spec["nodeSelector"] = selector
    if place.affinity:
        pod_spec["affinity"] = place.affinity
    if place.priority_class_name:
        pod_spec["priorityClassName"] = place.priority_class_name
    if place.scheduler_name:
        pod_spec["schedulerName"] = place.scheduler_name
    if spec.run_policy.queue_name:      # created suspended: Kueue lifts its gate when it admits the whole group
        pod_spec["schedulingGates"] = [{"name": KUEUE_GATE}]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": child_meta(job, worker_name(kind, name, rank), labels, annotations or None),
            "spec": restricted(pod_spec)}
