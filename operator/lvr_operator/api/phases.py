"""Phases of the three resources, as explicit state machines, and the condition vocabulary.

A phase is a summary for people and printer columns; conditions carry the detail (reason + message).
`JOB_TRANSITIONS` lists every move the reconciler may make; `check_transition` guards it in tests.
"""

from __future__ import annotations

from enum import Enum


class JobPhase(str, Enum):
    """Phase of an SFTJob or RLJob."""

    pending = "Pending"                    # accepted; nothing created yet (e.g. waiting for GPUs)
    waiting = "WaitingForDependencies"     # dataset not Ready / SFTJob not Succeeded
    created = "Created"                    # the whole gang of pods exists, not all running
    running = "Running"                    # every worker pod is running
    restarting = "Restarting"              # a worker failed; gang torn down, waiting out the backoff
    succeeded = "Succeeded"                # every worker exited 0
    failed = "Failed"                      # invalid spec, backoff limit or deadline exceeded
    suspended = "Suspended"                # runPolicy.suspend: pods deleted, resumes from checkpoint


class DatasetPhase(str, Enum):
    """Phase of a LongVideoDataset."""

    pending = "Pending"
    building = "Building"                  # `lvr data build` is writing the rows (source.build)
    validating = "Validating"              # `lvr data validate` is running
    caching = "Caching"                    # `lvr encode` is filling the embedding cache
    ready = "Ready"
    failed = "Failed"


JOB_TERMINAL = frozenset({JobPhase.succeeded, JobPhase.failed})
DATASET_TERMINAL = frozenset({DatasetPhase.ready, DatasetPhase.failed})

_J = JobPhase
JOB_TRANSITIONS: dict[JobPhase, frozenset[JobPhase]] = {
    _J.pending: frozenset({_J.waiting, _J.created, _J.running, _J.suspended, _J.failed}),
    _J.waiting: frozenset({_J.pending, _J.created, _J.suspended, _J.failed}),
    _J.created: frozenset({_J.running, _J.restarting, _J.succeeded, _J.failed, _J.suspended, _J.pending}),
    _J.running: frozenset({_J.restarting, _J.succeeded, _J.failed, _J.suspended, _J.created}),
    _J.restarting: frozenset({_J.created, _J.pending, _J.failed, _J.suspended}),
    _J.suspended: frozenset({_J.pending, _J.waiting, _J.created, _J.failed}),
    _J.succeeded: frozenset(),
    _J.failed: frozenset(),
}

_D = DatasetPhase
DATASET_TRANSITIONS: dict[DatasetPhase, frozenset[DatasetPhase]] = {
    _D.pending: frozenset({_D.building, _D.validating, _D.caching, _D.ready, _D.failed}),
    _D.building: frozenset({_D.validating, _D.caching, _D.ready, _D.failed, _D.pending}),
    _D.validating: frozenset({_D.caching, _D.ready, _D.failed, _D.pending}),
    _D.caching: frozenset({_D.ready, _D.failed, _D.pending}),
    _D.ready: frozenset({_D.pending}),      # a spec change re-runs preprocessing
    _D.failed: frozenset({_D.pending}),     # ... and so does fixing a failed one
}


def is_terminal(phase: JobPhase | DatasetPhase | str | None) -> bool:
    """True for phases that the reconciler never leaves on its own (jobs: Succeeded, Failed)."""
    if phase is None:
        return False
    if isinstance(phase, str) and not isinstance(phase, Enum):
        return phase in {p.value for p in JOB_TERMINAL}
    return phase in JOB_TERMINAL


def check_transition(old: JobPhase, new: JobPhase) -> bool:
    """Whether the job state machine allows `old -> new` (staying put is always allowed)."""
    return old == new or new in JOB_TRANSITIONS[old]


class ConditionType(str, Enum):
    """Condition types; each is True/False with a reason from `Reason`."""

    invalid_spec = "InvalidSpec"
    dependencies_ready = "DependenciesReady"
    created = "Created"
    running = "Running"
    restarting = "Restarting"
    suspended = "Suspended"
    succeeded = "Succeeded"
    failed = "Failed"
    validated = "Validated"
    cached = "Cached"
    ready = "Ready"
    status_update_refused = "StatusUpdateRefused"   # the API server refused the computed status (see message)
    trainer_config_changed = "TrainerConfigChanged"  # spec.trainer changed while the gang runs its older config


class Reason:
    """Condition reasons (CamelCase constants, as Kubernetes expects)."""

    INVALID_SPEC = "InvalidSpec"
    SPEC_VALID = "SpecValid"
    DATASET_NOT_FOUND = "DatasetNotFound"
    DATASET_NOT_READY = "DatasetNotReady"
    SFTJOB_NOT_FOUND = "SFTJobNotFound"
    SFTJOB_NOT_SUCCEEDED = "SFTJobNotSucceeded"
    DEPENDENCIES_READY = "DependenciesReady"
    INSUFFICIENT_RESOURCES = "InsufficientResources"
    GANG_CREATED = "GangCreated"
    UNSCHEDULABLE = "Unschedulable"
    POD_NOT_STARTING = "PodNotStarting"     # a container waits for a reason waiting does not cure
    ALL_WORKERS_RUNNING = "AllWorkersRunning"
    WORKER_FAILED = "WorkerFailed"
    BACKOFF = "Backoff"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    DOES_NOT_FIT = "DoesNotFit"             # the trainer's memory plan exceeds resources.gpuMemory: no restart
    OUTPUT_IN_USE = "OutputInUse"           # output.uri belongs to another job: no restart
    POD_GROUP_API_MISSING = "PodGroupAPIMissing"
    WAITING_FOR_ADMISSION = "WaitingForAdmission"   # pods held at a scheduling gate (Kueue) until admitted
    PREEMPTION_LIMIT_EXCEEDED = "PreemptionLimitExceeded"
    PREEMPTED = "Preempted"                 # a worker pod deleted / evicted / preempted: restart, not charged
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    SUSPENDED = "JobSuspended"
    RESUMED = "JobResumed"
    SUCCEEDED = "JobSucceeded"
    DEPENDENCY_FAILED = "DependencyFailed"
    CREATE_REFUSED = "CreateRefused"        # the API server refused a child (403/422): quota, Pod Security, a field
    TRAINER_CONFIG_CHANGED = "TrainerSpecChanged"
    TRAINER_CONFIG_CURRENT = "TrainerConfigCurrent"
    STATUS_UPDATE_REFUSED = "StatusUpdateRefused"
    STATUS_UPDATE_ACCEPTED = "StatusUpdateAccepted"
    CHILD_CONFLICT = "ChildConflict"        # a child's name is held by an object another controller owns
    BUILDING = "Building"
    BUILD_FAILED = "BuildFailed"
    VALIDATING = "Validating"
    VALIDATION_FAILED = "ValidationFailed"
    CACHING = "Caching"
    CACHING_FAILED = "CachingFailed"
    READY = "DatasetReady"
