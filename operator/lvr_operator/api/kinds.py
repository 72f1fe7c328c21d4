"""The three kinds: names, plural/short names, models and printer columns, in one table."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from lvr_operator.api.dataset import DatasetStatus, LongVideoDatasetSpec
from lvr_operator.api.jobs import JobStatus, RLJobSpec, SFTJobSpec


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    spec_model: type[BaseModel]
    status_model: type[BaseModel]
    description: str
    columns: tuple[tuple[str, str, str], ...] = field(default=())  # (name, type, jsonPath)

    @property
    def is_job(self) -> bool:
        return self.kind != "LongVideoDataset"


_JOB_COLUMNS = (
    ("Phase", "string", ".status.phase"),
    ("Progress", "string", ".status.progress.summary"),
    ("Restarts", "integer", ".status.restarts"),
    ("Preempted", "integer", ".status.preemptions"),
)
KINDS: tuple[Kind, ...] = (
    Kind("LongVideoDataset", "longvideodatasets", "longvideodataset", ("lvd", "lvds"), LongVideoDatasetSpec,
         DatasetStatus, "A long-video QA dataset: validated, and its video embeddings cached for training.",
         (("Phase", "string", ".status.phase"), ("Valid", "integer", ".status.rows.valid"),
          ("Invalid", "integer", ".status.rows.invalid"), ("Cached", "integer", ".status.cachedVideos"))),
    Kind("SFTJob", "sftjobs", "sftjob", ("sft",), SFTJobSpec, JobStatus,
         "Chain-of-thought supervised fine-tuning of a video VLM on one or more 8-GPU nodes.",
         _JOB_COLUMNS + (("Accuracy", "number", ".status.progress.accuracy"),
                         ("Loss", "number", ".status.progress.loss"))),
    Kind("RLJob", "rljobs", "rljob", ("rl", "rlj"), RLJobSpec, JobStatus,
         "GRPO reinforcement learning with MR-SP and a vLLM rollout sidecar on one or more 8-GPU nodes.",
         _JOB_COLUMNS + (("Reward", "number", ".status.progress.reward"),
                         ("Accuracy", "number", ".status.progress.accuracy"))),
)


def kind_by_name(name: str) -> Kind:
    """Look up by kind, plural or singular name (case-insensitive)."""
    low = name.lower()
    for k in KINDS:
        if low in (k.kind.lower(), k.plural, k.singular):
            return k
    raise KeyError(f"unknown kind {name!r}; known: {', '.join(k.kind for k in KINDS)}")
