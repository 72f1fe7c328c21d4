"""SFTJob / RLJob children: ConfigMap, headless Service, trainer ServiceAccount + Role, worker pods, and a
coscheduling PodGroup when the spec asks for one."""

from __future__ import annotations

import hashlib
from typing import Any

import yaml

from lvr_operator.api.common import GPU_RESOURCE
from lvr_operator.api.jobs import JobSpecBase
from lvr_operator.manifests.common import (ANNOTATION_PROGRESS, KUEUE_GROUP, KUEUE_GROUP_COUNT, KUEUE_QUEUE,
                                           LABEL_ROLE, PODGROUP_API, PODGROUP_LABEL, PODGROUP_VERSION, child_meta,
                                           config_name, name_of, namespace_of, owner_labels, pod_group_name,
                                           service_name, trainer_account_name, worker_name)
from lvr_operator.settings import OperatorSettings

CONFIG_DIR = "/etc/lvr"
CONFIG_FILE = f"{CONFIG_DIR}/trainer.yaml"
TERMINATION_LOG = "/dev/termination-log"   # the containers' terminationMessagePath (Kubernetes' default)
TRAINER = "trainer"


def config_text(trainer_config: Any) -> str:
    return yaml.safe_dump(trainer_config.model_dump(mode="json"), sort_keys=False)


def config_digest(trainer_config: Any) -> str:
    """sha256 of the config the pods get: status.trainerConfigDigest records the running gang's."""
    return hashlib.sha256(config_text(trainer_config).encode()).hexdigest()


def config_map(job: dict[str, Any], trainer_config: Any) -> dict[str, Any]:
    """The validated trainer config as YAML, mounted at /etc/lvr/trainer.yaml."""
    text = config_text(trainer_config)
    meta = child_meta(job, config_name(job["kind"], name_of(job)))
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
            "data": {"trainer.yaml": text}}


def headless_service(job: dict[str, Any], settings: OperatorSettings) -> dict[str, Any]:
    """Gives worker-0 a stable DNS name (<job>-<kind>-worker-0.<job>-<kind>-workers) for the torchrun
    rendezvous."""
    meta = child_meta(job, service_name(job["kind"], name_of(job)))
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                     "selector": {**owner_labels(job), LABEL_ROLE: "worker"},
                     "ports": [{"name": "rendezvous", "port": settings.master_port,
                                "targetPort": settings.master_port}]}}


def pod_group(job: dict[str, Any], spec: JobSpecBase) -> dict[str, Any]:
    """The scheduler-plugins coscheduling PodGroup of the gang: all `nodes` workers bound, or none."""
    return {"apiVersion": f"{PODGROUP_API}/{PODGROUP_VERSION}", "kind": "PodGroup",
            "metadata": child_meta(job, pod_group_name(job["kind"], name_of(job))),
            "spec": {"minMember": spec.resources.nodes,
                     "scheduleTimeoutSeconds": spec.run_policy.pod_group.schedule_timeout_seconds}}


def gang_labels(job: dict[str, Any], spec: JobSpecBase) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) that hand the gang to the batch scheduler the spec names: Kueue's queue and
    pod group (one workload of `nodes` pods), and the coscheduling PodGroup's label."""
    labels, annotations = {}, {}
    rp = spec.run_policy
    if rp.queue_name:
        labels[KUEUE_QUEUE] = rp.queue_name
        labels[KUEUE_GROUP] = name_of(job)
        annotations[KUEUE_GROUP_COUNT] = str(spec.resources.nodes)
    if rp.pod_group is not None:
        labels[PODGROUP_LABEL] = pod_group_name(job["kind"], name_of(job))
    return labels, annotations


def trainer_rbac(job: dict[str, Any], nodes: int) -> list[dict[str, Any]]:
    """A ServiceAccount that may get and patch only this job's own worker pods (progress annotation)."""
    name, ns = name_of(job), namespace_of(job)
    account = trainer_account_name(job["kind"], name)
    pods = [worker_name(job["kind"], name, r) for r in range(nodes)]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": child_meta(job, account)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": child_meta(job, account),
         "rules": [{"apiGroups": [""], "resources": ["pods"], "resourceNames": pods, "verbs": ["get", "patch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": child_meta(job, account),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
         "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": ns}]},
    ]


def master_addr(job: dict[str, Any]) -> str:
    """Rank 0's stable DNS name behind the headless Service."""
    kind, name = job["kind"], name_of(job)
    return f"{worker_name(kind, name, 0)}.{service_name(kind, name)}.{namespace_of(job)}.svc"


def rendezvous_env(job: dict[str, Any], spec: JobSpecBase, rank: int, settings: OperatorSettings) -> list[dict]:
    name, ns = name_of(job), namespace_of(job)
    master = master_addr(job)
    values = {"LVR_JOB": f"{ns}/{name}", "LVR_JOB_KIND": job["kind"], "LVR_NNODES": spec.resources.nodes,
              "LVR_NODE_RANK": rank, "LVR_NPROC_PER_NODE": nproc(spec), "MASTER_ADDR": master,
              "MASTER_PORT": settings.master_port, "LVR_CONFIG": CONFIG_FILE,
              "LVR_PROGRESS_ANNOTATION": ANNOTATION_PROGRESS, "LVR_TERMINATION_LOG": TERMINATION_LOG}
    env = [{"name": k, "value": str(v)} for k, v in values.items()]
    env += [{"name": "LVR_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "LVR_POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]
    return env


def s3_env(secret: str | None, endpoint: str | None) -> list[dict[str, Any]]:
    """Cache credentials from the user's Secret (keys accessKey / secretKey) and the endpoint
    (LVR_S3_ENDPOINT is what lvr_trainer.storage.s3 reads; AWS_ENDPOINT_URL for AWS tools)."""
    env: list[dict[str, Any]] = ([{"name": "LVR_S3_ENDPOINT", "value": endpoint},
                                  {"name": "AWS_ENDPOINT_URL", "value": endpoint}] if endpoint else [])
    if secret:
        env += [{"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
                for var, key in (("AWS_ACCESS_KEY_ID", "accessKey"), ("AWS_SECRET_ACCESS_KEY", "secretKey"))]
    return env


def nproc(spec: JobSpecBase) -> int:
    return max(spec.trainer_gpus(), 1)


def launch_command(job: dict[str, Any], spec: JobSpecBase, rank: int, settings: OperatorSettings) -> list[str]:
    """torchrun with the gang's shape, running `lvr sft|rl --config /etc/lvr/trainer.yaml --resume`.

    `--resume` always: the trainer continues from output.dir's latest checkpoint after a gang restart or
    a suspend, and starts from scratch when there is none (LVR_RESUME_FROM only names it for humans).
    A one-pod gang rendezvouses inside its pod (`--standalone`: no DNS, no fixed port); a larger one
    through rank 0's stable name behind the headless Service."""
    if spec.command:
        return list(spec.command)
    stage = "rl" if job["kind"] == "RLJob" else "sft"
    trainer = ["-m", "lvr_trainer.cli", stage, "--config", CONFIG_FILE, "--resume"]
    if spec.resources.nodes == 1:
        return ["torchrun", "--standalone", "--nnodes=1", f"--nproc-per-node={nproc(spec)}", *trainer]
    return ["torchrun", f"--nnodes={spec.resources.nodes}", f"--nproc-per-node={nproc(spec)}",
            f"--node-rank={rank}", f"--master-addr={master_addr(job)}",
            f"--master-port={settings.master_port}", *trainer]


def resources(spec: JobSpecBase) -> dict[str, Any]:
    """The trainer container's requests = limits (an RLJob's rollout sidecar has its GPUs apart)."""
    limits: dict[str, Any] = {}
    if spec.trainer_gpus():
        limits[GPU_RESOURCE] = spec.trainer_gpus()
    if spec.resources.cpu:
        limits["cpu"] = spec.resources.cpu
    if spec.resources.memory:
        limits["memory"] = spec.resources.memory
    return {"limits": limits, "requests": dict(limits)} if limits else {}
