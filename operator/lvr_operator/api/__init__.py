"""The operator's API: spec/status models of the three custom resources and their phase machine."""

from lvr_operator.api.common import (API_VERSION, GROUP, GPU_RESOURCE, VERSION, CacheSpec, Condition,
                                     ObjectRef, OutputSpec, PlacementSpec, ResourcesSpec, RunPolicy,
                                     S3CacheSpec)
from lvr_operator.api.dataset import DatasetStatus, LongVideoDatasetSpec
from lvr_operator.api.jobs import JobProgress, JobStatus, ModelSource, RLJobSpec, RolloutSpec, SFTJobSpec
from lvr_operator.api.phases import (ConditionType, DatasetPhase, JobPhase, Reason, check_transition,
                                     is_terminal)
from lvr_operator.api.kinds import KINDS, Kind, kind_by_name

__all__ = [
    "API_VERSION", "GROUP", "GPU_RESOURCE", "VERSION", "CacheSpec", "Condition", "ObjectRef", "OutputSpec",
    "PlacementSpec", "ResourcesSpec", "RunPolicy", "S3CacheSpec", "DatasetStatus", "LongVideoDatasetSpec",
    "JobProgress", "JobStatus", "ModelSource", "RLJobSpec", "RolloutSpec", "SFTJobSpec", "ConditionType",
    "DatasetPhase", "JobPhase", "Reason", "check_transition", "is_terminal", "KINDS", "Kind", "kind_by_name",
]
