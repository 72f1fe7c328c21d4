"""SFTJob and RLJob: spec and status models.

`spec.trainer` is the trainer's own `TrainerConfig` (lvr_trainer/config.py), minus what the operator
derives from the other spec fields (model path, dataset, cache, output). The CRD embeds the trainer's
schema there and keeps unknown keys, so that a typo reaches the operator, which answers with an
InvalidSpec condition naming the key and its closest match instead of the apiserver dropping it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from lvr_operator.api.common import (CacheSpec, CamelModel, Condition, ObjectRef, OutputSpec, PlacementSpec,
                                     JobResourcesSpec, RunPolicy)
from lvr_operator.api.phases import JobPhase

TRAINER_SCHEMA_MARK = "x-lvr-embed-trainer-config"


class ModelSource(CamelModel):
    """The starting weights: exactly one of `uri`, `fromSFTJob` and `preset`."""

    uri: str | None = Field(None, description="Model directory: s3://bucket/prefix or a path. Default unset.")
    from_sft_job: str | None = Field(
        None, alias="fromSFTJob",
        description="Name of an SFTJob in this namespace; the job waits until it Succeeded and starts from "
        "the model directory of its final checkpoint (`<lastCheckpoint>/model`). Default unset.")
    preset: str | None = Field(
        None, description="A built-in random-init model (`tiny`: tests and the CPU demo). Default unset.")

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        if sum(v is not None for v in (self.uri, self.from_sft_job, self.preset)) != 1:
            raise ValueError("set exactly one of `model.uri` (a model directory), `model.fromSFTJob` "
                             "(an SFTJob's name) and `model.preset` (a built-in random-init model)")
        return self


class JobSpecBase(CamelModel):
    """Fields shared by SFTJob and RLJob."""

    dataset_ref: ObjectRef = Field(..., description="The LongVideoDataset to train on; the job waits until "
                                   "it is Ready. Required.")
    model: ModelSource = Field(..., description="Starting weights. Required.")
    frames: int | None = Field(None, ge=1, le=8192, description="Frames sampled per video, 1-8192. "
                               "Default: the dataset's `frames`.")
    trainer: dict[str, Any] = Field(
        default_factory=dict, json_schema_extra={TRAINER_SCHEMA_MARK: True},
        description="The trainer's config (see `lvr config schema`): train, optim, parallel, ... "
        "`model.path`, `data.train`, `cache.uri` and `output.dir` are filled in by the operator; an RLJob's rollout "
        "engine, mode, GPU share and tensor parallelism are `spec.rollout`'s (refused here). Mutable, read "
        "when the gang starts: a change while pods run is reported (condition TrainerConfigChanged) and applies "
        "at the gang's next start (a restart, a preemption, or runPolicy.suspend true then false). Default {}.")
    resources: JobResourcesSpec = Field(default_factory=JobResourcesSpec,
                                        description="Gang size. Default 1 node x 8 GPUs.")
    placement: PlacementSpec = Field(default_factory=PlacementSpec,
                                     description="Node selection. Default: an 8-GPU NVIDIA node.")
    cache: CacheSpec = Field(default_factory=CacheSpec, description="Embedding cache. Default: the dataset's.")
    output: OutputSpec = Field(..., description="Checkpoint destination. Required.")
    run_policy: RunPolicy = Field(default_factory=RunPolicy, description="Restarts, deadline, TTL, suspend.")
    image: str | None = Field(None, description="Trainer image. Default: the operator's --trainer-image.")
    command: list[str] | None = Field(
        None, description="Advanced: replaces the torchrun launch command (the rendezvous env is still "
        "set: LVR_NNODES, LVR_NODE_RANK, LVR_NPROC_PER_NODE, MASTER_ADDR, MASTER_PORT). Default unset.")

    def trainer_gpus(self) -> int:
        """GPUs per pod for the trainer container (one torchrun rank each; an RLJob may give some to its
        rollout sidecar)."""
        return self.resources.gpus_per_node


class SFTJobSpec(JobSpecBase):
    """Chain-of-thought supervised fine-tuning (stage 1)."""


class RolloutSpec(CamelModel):
    """The rollout engine that generates the G responses per prompt (the trainer's `rollout` section)."""

    engine: Literal["transformers", "vllm"] = Field(
        "transformers", description="transformers (generate()) or vllm (the rollout image carries vLLM). "
        "Default transformers.")
    mode: Literal["inprocess", "sidecar"] = Field(
        "inprocess", description="inprocess: inside the trainer processes; sidecar: `lvr rollout-server` in a "
        "container beside the trainer in each pod (a native sidecar on Kubernetes >= 1.29), sent the "
        "trainer's weights after every step. Default inprocess.")
    gpu_memory_utilization: float = Field(
        0.5, gt=0, le=0.95, description="vllm only: fraction of each GPU's memory vLLM may take, (0, 0.95]. "
        "Default 0.5.")
    image: str | None = Field(None, description="sidecar only: the rollout server's image. Default: the "
                              "operator's --rollout-image for vllm, the trainer's image for transformers.")
    port: int = Field(8000, ge=1024, le=65535, description="sidecar only: the rollout server's HTTP port "
                      "(on the pod's loopback). Default 8000.")
    tensor_parallel: int = Field(1, ge=1, le=8, description="vllm sidecar only: tensor-parallel size, 1-8. "
                                 "Default 1.")
    gpus: int | None = Field(
        None, ge=0, le=7, description="sidecar only: GPUs of each pod given to the rollout server through the "
        "device plugin; the trainer gets the rest (`resources.gpusPerNode` minus these). Default: "
        "`tensorParallel` when the pod has GPUs, else 0.")

    memory: str | None = Field(
        None, description="sidecar only: memory request and limit of the rollout server's container, e.g. `40Gi`: "
        "its model in the trainer's model.dtype, one weight bucket (spec.trainer rollout.weight_bucket_mb) and the "
        "engine's working memory. Required when `resources.memory` is set. Default unset (no request).")

    @model_validator(mode="after")
    def _sidecar_only(self) -> RolloutSpec:
        if self.mode == "inprocess":
            for name, value, default in (("gpus", self.gpus, None), ("tensorParallel", self.tensor_parallel, 1),
                                         ("image", self.image, None), ("memory", self.memory, None)):
                if value != default:
                    raise ValueError(f"`rollout.{name}` applies to the rollout sidecar only: set `rollout.mode: "
                                     f"sidecar`, or remove `rollout.{name}`")
        if self.engine == "transformers" and self.tensor_parallel != 1:
            raise ValueError("`rollout.tensorParallel` > 1 needs `rollout.engine: vllm`")
        return self

    def server_gpus(self, gpus_per_node: int) -> int:
        """GPUs per pod for the rollout server (0 in process, or on CPU pods)."""
        if self.mode != "sidecar" or gpus_per_node == 0:
            return 0
        return self.tensor_parallel if self.gpus is None else self.gpus

    def trainer_section(self) -> dict[str, Any]:
        """The trainer config's `rollout` section this spec stands for."""
        out: dict[str, Any] = {"engine": self.engine, "mode": self.mode,
                               "gpu_memory_utilization": self.gpu_memory_utilization}
        if self.mode == "sidecar":
            out["sidecar_url"] = f"http://127.0.0.1:{self.port}"
        if self.tensor_parallel != 1:
            out["tensor_parallel"] = self.tensor_parallel
        return out


class RLJobSpec(JobSpecBase):
    """GRPO reinforcement learning with MR-SP (stage 2)."""

    rollout: RolloutSpec = Field(default_factory=RolloutSpec,
                                 description="Rollout engine. Default transformers, in process.")

    @model_validator(mode="after")
    def _sidecar_memory(self) -> RLJobSpec:
        if self.rollout.mode == "sidecar" and self.resources.memory and not self.rollout.memory:
            raise ValueError("`resources.memory` bounds the trainer container; the rollout sidecar beside it needs "
                             "its own `rollout.memory` (its model in model.dtype plus one weight bucket and the "
                             "engine's working memory, e.g. 40Gi for a 7B model in bf16)")
        return self

    @model_validator(mode="after")
    def _gpus_split(self) -> RLJobSpec:
        server, total = self.rollout.server_gpus(self.resources.gpus_per_node), self.resources.gpus_per_node
        if total and self.rollout.mode == "sidecar" and self.rollout.engine == "vllm" and server == 0:
            raise ValueError(f"`rollout.gpus: 0` leaves the vLLM rollout sidecar no GPU on pods of {total} GPUs "
                             "(`resources.gpusPerNode`): give it at least `rollout.tensorParallel` GPUs (remove "
                             "rollout.gpus for that default), or use `rollout.engine: transformers`")
        if total and server >= total:
            raise ValueError(f"`rollout.gpus` ({server}) leaves no GPU of `resources.gpusPerNode` ({total}) to "
                             "the trainer: lower rollout.gpus, or raise resources.gpusPerNode")
        if server and server < self.rollout.tensor_parallel:
            raise ValueError(f"`rollout.gpus` ({server}) is fewer than `rollout.tensorParallel` "
                             f"({self.rollout.tensor_parallel}): vLLM needs one GPU per tensor-parallel rank")
        return self

    def trainer_gpus(self) -> int:
        return self.resources.gpus_per_node - self.rollout.server_gpus(self.resources.gpus_per_node)


class JobProgress(CamelModel):
    """Training progress, reported by rank 0 through its pod's annotation and mirrored here."""

    step: int | None = Field(None, ge=0, description="Optimizer steps done.")
    total_steps: int | None = Field(None, ge=0, description="Optimizer steps in the run.")
    percent: int | None = Field(None, ge=0, le=100, description="step / totalSteps, in percent.")
    summary: str | None = Field(None, description="`step/total`, for the printer column.")
    reward: float | None = Field(None, description="Mean reward of the last logged step (RL).")
    accuracy: float | None = Field(None, description="Last evaluation or rollout accuracy, 0-1.")
    loss: float | None = Field(None, description="Last logged training loss.")
    last_checkpoint: str | None = Field(None, description="URI of the newest complete checkpoint.")
    initial_weights: str | None = Field(None, description="sha256 of the weights the run started from: of "
                                        "its weight files (lvr_trainer.model.loading.files_digest), or of a "
                                        "preset's random-init weights (weights_digest).")
    updated_at: str | None = Field(None, description="When rank 0 last reported (RFC 3339).")
    dropped_values: int | None = Field(
        None, ge=0, description="Values of rank 0's last report left out: not finite (a NaN loss), of the wrong "
        "type or too long. Unset when none was.")


class JobStatus(CamelModel):
    """Observed state of an SFTJob/RLJob; written only by the operator."""

    phase: JobPhase = Field(JobPhase.pending, description="Summary phase (see conditions for details).")
    message: str | None = Field(None, description="Human-readable summary of the latest transition.")
    conditions: list[Condition] = Field(default_factory=list, description="Detailed conditions.")
    observed_generation: int | None = Field(None, description="metadata.generation last reconciled.")
    start_time: str | None = Field(None, description="When the gang was first created (or last resumed).")
    completion_time: str | None = Field(None, description="When the job Succeeded or Failed.")
    restarts: int = Field(0, ge=0, description="Gang restarts after a worker failed (counted against backoffLimit).")
    preemptions: int = Field(0, ge=0, description="Gang restarts after a worker pod was deleted, evicted or "
                             "preempted (its trainer checkpointed on SIGTERM); not counted against backoffLimit.")
    preemption_history: list[str] | None = Field(
        None, description="The last 10 preemptions, oldest first, each `<time> worker <rank> (pod <name>) <how>`.")
    next_restart_time: str | None = Field(None, description="While Restarting: when the gang is recreated.")
    workers: int | None = Field(None, ge=0, description="Worker pods currently running.")
    model_uri: str | None = Field(None, description="The weights the trainer starts from (resolved).")
    trainer_config_digest: str | None = Field(
        None, description="sha256 of the trainer config the current gang started with (its ConfigMap).")
    progress: JobProgress | None = Field(None, description="Progress reported by the trainer.")
