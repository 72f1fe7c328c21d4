"""LongVideoDataset: a JSONL of long-video QA rows, its videos, and the embedding cache it fills."""

from __future__ import annotations

from pydantic import Field, model_validator

from lvr_operator.api.common import CacheSpec, CamelModel, Condition, ResourcesSpec
from lvr_operator.api.phases import DatasetPhase


class ChatEndpoint(CamelModel):
    """An OpenAI-compatible chat endpoint (a vLLM server, or a hosted API)."""

    url: str = Field(..., pattern=r"^https?://", description="Base URL, e.g. `http://vlm.models:8000/v1`. Required.")
    model: str | None = Field(None, description="Model name. Default: the first one the endpoint lists.")


class SecretKeyRef(CamelModel):
    """One key of a Secret in the dataset's namespace."""

    name: str = Field(..., min_length=1, description="Secret name. Required.")
    key: str = Field("apiKey", min_length=1, description="Key in the Secret. Default `apiKey`.")


class BuildSource(CamelModel):
    """Build the rows from raw videos first (`lvr data build`: clip captions from the captioner, questions
    with reasoning from the reasoner, filtered), writing them next to `source.jsonl`."""

    videos: str = Field(..., pattern=r"^s3://", description="s3:// prefix of the videos. Required.")
    captioner: ChatEndpoint = Field(..., description="Endpoint of a VLM that captions clips. Required.")
    reasoner: ChatEndpoint = Field(..., description="Endpoint of an LLM that writes the questions. Required.")
    api_key_secret: SecretKeyRef | None = Field(
        None, description="API key of both endpoints (never in the spec itself). Default: none.")
    clip_seconds: float = Field(10.0, gt=0, le=600, description="Seconds per captioned clip. Default 10.")
    questions_per_category: int = Field(2, ge=1, le=20, description="Questions asked per video and category, "
                                        "before filtering. Default 2.")
    concurrency: int = Field(8, ge=1, le=256, description="Calls in flight at once. Default 8.")


class DatasetSource(CamelModel):
    """Where the rows and videos are: s3:// URIs, or paths on a PersistentVolumeClaim."""

    jsonl: str = Field(..., min_length=1, description="Rows (JSONL): s3://bucket/key, an absolute path, or a path "
                       "under /data when `pvc` is set. Required.")
    videos: str | None = Field(None, description="Prefix that relative `video` paths resolve against. "
                               "Default: the JSONL's directory.")
    pvc: str | None = Field(None, description="PersistentVolumeClaim mounted read-only at /data. Default unset.")
    build: BuildSource | None = Field(
        None, description="Build the rows from `build.videos` first; `jsonl` then names where they go and "
        "must be s3://.../train.jsonl. Default unset (the rows exist).")

    @model_validator(mode="after")
    def _build_target(self) -> DatasetSource:
        if self.build is not None and not (self.jsonl.startswith("s3://") and self.jsonl.endswith("/train.jsonl")):
            raise ValueError(f"source.jsonl {self.jsonl!r}: with source.build it names where the built rows go, "
                             "so it must be s3://bucket/prefix/train.jsonl (val.jsonl and test.jsonl go beside it)")
        return self


class EncoderSpec(CamelModel):
    """The vision tower that `lvr encode` runs to fill the cache."""

    model: str | None = Field(None, description="Model directory or s3:// URI whose vision tower encodes the "
                              "frames. Default: skip caching (validate only).")
    preset: str | None = Field(None, description="Tiny built-in preset instead of `model` (tests). Default unset.")


class LongVideoDatasetSpec(CamelModel):
    """A dataset: validated once, its video embeddings cached once, shared by every job."""

    source: DatasetSource = Field(..., description="Rows and videos. Required.")
    frames: int = Field(64, ge=1, le=8192, description="Frames sampled per video, 1-8192. Default 64.")
    max_pixels: int = Field(50176, ge=784, le=16777216, description="Pixel budget per frame (frames are scaled "
                            "down to fit, aspect kept); jobs on this dataset use it too. Default 50176 (224x224).")
    max_error_rate: float = Field(
        0.0, ge=0, le=1, description="Fraction of bad rows tolerated by validation, and of videos that fail to "
        "encode (skipped, counted, listed in status), 0-1. Default 0.")
    encoder: EncoderSpec = Field(default_factory=EncoderSpec, description="Vision tower for caching.")
    cache: CacheSpec = Field(default_factory=CacheSpec, description="Where embeddings are cached.")
    resources: ResourcesSpec = Field(
        default_factory=lambda: ResourcesSpec(nodes=1, gpus_per_node=1),
        description="The preprocessing pod's size (nodes is ignored). Default 1 GPU.")
    image: str | None = Field(None, description="Image with `lvr`. Default: the operator's --trainer-image.")
    backoff_limit: int = Field(2, ge=0, le=20, description="Retries of a failed preprocessing pod. Default 2.")


class BuildCounts(CamelModel):
    """What `lvr data build` did."""

    videos: int = Field(0, ge=0, description="Videos found.")
    skipped: int = Field(0, ge=0, description="Videos skipped (not decodable), each named in the pod's log.")
    clips: int = Field(0, ge=0, description="Clips captioned.")
    questions: int = Field(0, ge=0, description="Questions generated.")
    kept: int = Field(0, ge=0, description="Questions kept after the filters.")
    dropped: dict[str, int] = Field(default_factory=dict, description="Questions dropped, by reason.")
    calls: int = Field(0, ge=0, description="Endpoint calls made (retries not counted).")


class RowCounts(CamelModel):
    """What `lvr data validate` found."""

    total: int = Field(0, ge=0, description="Rows read.")
    valid: int = Field(0, ge=0, description="Rows that passed every check.")
    invalid: int = Field(0, ge=0, description="Rows skipped, by any error.")


class DatasetStatus(CamelModel):
    """Observed state of a LongVideoDataset; written only by the operator."""

    phase: DatasetPhase = Field(DatasetPhase.pending, description="Summary phase.")
    message: str | None = Field(None, description="Summary of the latest transition.")
    conditions: list[Condition] = Field(default_factory=list, description="Detailed conditions.")
    observed_generation: int | None = Field(None, description="metadata.generation last reconciled.")
    built: BuildCounts | None = Field(None, description="Counts from building the rows (source.build).")
    rows: RowCounts | None = Field(None, description="Row counts from validation.")
    cached_videos: int | None = Field(None, ge=0, description="Videos whose embeddings are in the cache.")
    cached_bytes: int | None = Field(None, ge=0, description="Bytes of embeddings in the cache.")
    failed_videos: int | None = Field(None, ge=0, description="Videos that failed to encode and were skipped.")
    failed_video_examples: list[str] | None = Field(
        None, description="The first failed videos, each `path: reason`.")
    attempts: int = Field(0, ge=0, description="Preprocessing pods started so far.")
    start_time: str | None = Field(None, description="When preprocessing started.")
    completion_time: str | None = Field(None, description="When the dataset became Ready or Failed.")
