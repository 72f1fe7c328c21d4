"""Spec and status pieces shared by LongVideoDataset, SFTJob and RLJob.

Fields are camelCase on the wire (aliases) and snake_case in Python. Every field has one description
that states its default, bounds and unit; the CRD generator copies those texts into the OpenAPI schema.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "longvideo.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
GPU_RESOURCE = "nvidia.com/gpu"
# Defaults for an 8xA100 node labelled by NVIDIA GPU feature discovery and tainted for GPU pods only.
DEFAULT_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
DEFAULT_TOLERATIONS = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]


class CamelModel(BaseModel):
    """Base of every CR model: camelCase aliases, unknown keys rejected."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              use_enum_values=True)

    def wire(self) -> dict[str, Any]:
        """The object as it appears in the CR (camelCase, None fields dropped)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ObjectRef(CamelModel):
    """A reference to another object in the same namespace."""

    name: str = Field(..., min_length=1, max_length=253, description="Name of the object. Required.")


class S3CacheSpec(CamelModel):
    """An S3/MinIO bucket shared by every pod (embedding cache, checkpoints)."""

    endpoint: str = Field(..., min_length=1,
                          description="S3 endpoint URL with scheme, e.g. `http://minio.lvr:9000`. Required.")
    bucket: str = Field(..., min_length=3, max_length=63, description="Bucket name. Required.")
    prefix: str = Field("embeddings", description="Key prefix inside the bucket. Default `embeddings`.")
    region: str | None = Field(None, description="Region, when the server needs one. Default unset.")
    credentials_secret: str | None = Field(
        None, description="Secret in the job's namespace with keys `accessKey` and `secretKey`; "
        "exposed to the pods as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Default: none (anonymous).")

    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix.strip('/')}" if self.prefix.strip("/") else f"s3://{self.bucket}"


class CacheSpec(CamelModel):
    """Where video embeddings are cached. Without `s3`, each pod keeps a private cache in /dev/shm."""

    s3: S3CacheSpec | None = Field(None, description="Shared S3/MinIO cache. Default: none (per-pod cache).")


class ResourcesSpec(CamelModel):
    """Size of the gang: `nodes` pods, each with `gpusPerNode` GPUs (one torchrun rank per GPU)."""

    nodes: int = Field(1, ge=1, le=64, description="Pods (one per node) in the gang, 1-64. Default 1.")
    gpus_per_node: int = Field(
        8, ge=0, le=8, description="nvidia.com/gpu per pod, 0-8; also torchrun's nproc_per_node. "
        "0 runs one CPU process per pod (tests). Default 8.")
    cpu: str | None = Field(None, description="CPU request and limit per pod, e.g. `64`. Default unset.")
    memory: str | None = Field(None, description="Memory request and limit per pod, e.g. `900Gi`. Default unset.")
    shm_size: str = Field("64Gi", description="Size limit of the /dev/shm memory volume. Default 64Gi.")


class JobResourcesSpec(ResourcesSpec):
    """A training job's gang size, and the memory of its GPUs for the trainer's memory plan."""

    gpu_memory: str = Field(
        "80Gi", pattern=r"^[0-9]*\.?[0-9]+([KMGT]i?B?)?$",
        description="Memory of one GPU, for the trainer's pre-flight memory plan (`lvr plan`): a job whose plan "
        "exceeds it stops before loading weights, Failed with reason DoesNotFit naming the largest component and "
        "the settings that would fit. Default 80Gi.")


class Toleration(CamelModel):
    """A pod toleration (see the core/v1 Toleration type)."""

    key: str | None = Field(None, description="Taint key; empty with operator Exists matches every taint.")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists or Equal. Default Equal.")
    value: str | None = Field(None, description="Taint value for operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches all.")
    toleration_seconds: int | None = Field(None, ge=0, description="For NoExecute: seconds bound before eviction.")


class PlacementSpec(CamelModel):
    """Where the pods may run. Defaults select an 8-GPU NVIDIA node (label nvidia.com/gpu.present=true)
    and tolerate its nvidia.com/gpu NoSchedule taint; set `nodeSelector: {}` to select any node."""

    node_selector: dict[str, str] | None = Field(
        None, description="Node labels the pods require. Default {nvidia.com/gpu.present: 'true'}.")
    tolerations: list[Toleration] | None = Field(
        None, description="Tolerations. Default: tolerate nvidia.com/gpu (Exists, NoSchedule).")
    affinity: dict[str, Any] | None = Field(
        None, description="A core/v1 Affinity, copied verbatim into the pods. Default unset.")
    priority_class_name: str | None = Field(None, description="PriorityClass of the pods. Default unset.")
    scheduler_name: str | None = Field(
        None, min_length=1, max_length=253,
        description="The scheduler of the pods (e.g. scheduler-plugins' coscheduling scheduler, with "
        "runPolicy.podGroup). Default: the cluster's default scheduler.")

    def effective_node_selector(self) -> dict[str, str]:
        return dict(DEFAULT_NODE_SELECTOR) if self.node_selector is None else dict(self.node_selector)

    def effective_tolerations(self) -> list[dict[str, Any]]:
        if self.tolerations is None:
            return [dict(t) for t in DEFAULT_TOLERATIONS]
        return [t.wire() for t in self.tolerations]


class PodGroupPolicy(CamelModel):
    """A scheduler-plugins coscheduling PodGroup for the gang."""

    schedule_timeout_seconds: int = Field(
        600, ge=1, le=86400,
        description="Seconds the coscheduling plugin waits for the whole gang to fit before it rejects "
        "the pods it holds (they are retried). Default 600.")


class RunPolicy(CamelModel):
    """Restarts, deadline, clean-up and suspension; the same knobs as Kubeflow's RunPolicy."""

    backoff_limit: int = Field(
        3, ge=0, le=100, description="Gang restarts after a worker fails before the job is Failed, 0-100. "
        "Default 3.")
    backoff_seconds: int = Field(
        10, ge=0, le=3600, description="First restart delay in seconds; doubles per restart. Default 10.")
    max_backoff_seconds: int = Field(
        600, ge=0, le=86400, description="Upper bound of the restart delay, seconds. Default 600.")
    admit_beyond_plan: bool = Field(
        False, description="Start the trainer even when its memory plan exceeds `resources.gpuMemory` (it logs a "
        "warning instead of stopping). Default false.")
    max_preemptions: int = Field(
        10, ge=0, le=1000,
        description="Gang restarts after a worker pod was deleted, evicted or preempted before the job is Failed "
        "(its message lists the last preemptions), 0-1000. The first such restart is immediate, the n-th waits "
        "backoffSeconds x 2^(n-2), at most maxBackoffSeconds. Default 10.")
    active_deadline_seconds: int | None = Field(
        None, ge=1, description="Seconds the job may run (counted from its start or last resume) "
        "before it is stopped and Failed. Default: no deadline.")
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete the job (and its pods) this many seconds after it finished. "
        "Default: keep.")
    suspend: bool = Field(
        False, description="true deletes the pods and keeps the job; false again resumes it from the last "
        "checkpoint. Mutable. Default false.")
    queue_name: str | None = Field(
        None, min_length=1, max_length=63,
        description="Kueue LocalQueue to submit the gang to: every worker pod gets kueue.x-k8s.io/queue-name "
        "and one pod group (kueue.x-k8s.io/pod-group-name, pod-group-total-count = resources.nodes), and is "
        "created behind Kueue's scheduling gate (kueue.x-k8s.io/admission), so Kueue admits the gang as one "
        "workload; the operator's own capacity gate steps aside. Needs Kueue with its `pod` integration and "
        "Kubernetes >= 1.27 (scheduling gates). Default: none.")
    pod_group: PodGroupPolicy | None = Field(
        None,
        description="Create a scheduler-plugins coscheduling PodGroup (scheduling.x-k8s.io/v1alpha1) with "
        "minMember = resources.nodes and label the pods with it, so the coscheduling plugin binds all "
        "workers or none; set placement.schedulerName to the scheduler that runs the plugin. The PodGroup "
        "CRD must be installed. Default: none.")
    termination_grace_period_seconds: int = Field(
        60, ge=0, le=86400,
        description="Seconds a worker pod has after SIGTERM (deleted, preempted, evicted) to finish its step "
        "and save a checkpoint, which the restarted gang resumes from; such a restart is counted in "
        "status.preemptions, not against backoffLimit. Under torchrun the workers also get at most 30 s. "
        "Default 60.")


class OutputSpec(CamelModel):
    """Where checkpoints and logs go."""

    uri: str = Field(..., min_length=1, description="s3://bucket/prefix (or a path on a shared volume). The first "
                     "job to train there owns it (`.lvr-owner`): another job pointed at it fails with reason "
                     "OutputInUse instead of sharing its checkpoints; the same job started again resumes. Required.")


class Condition(CamelModel):
    """A standard Kubernetes condition."""

    type: str = Field(..., description="Condition type, e.g. Running, InvalidSpec, DependenciesReady.")
    status: Literal["True", "False", "Unknown"] = Field(..., description="True, False or Unknown.")
    reason: str = Field("", description="CamelCase reason from a fixed list.")
    message: str = Field("", description="What happened and what to do about it.")
    last_transition_time: str | None = Field(None, description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(None, description="metadata.generation this was computed from.")
