"""The trainer config a job's pods read: spec fields the operator derives, overlaid by `spec.trainer`.

Validated with the trainer's own models (lvr_trainer.config), so a bad key is reported here, as an
InvalidSpec condition, instead of as a crash loop in the pods.
"""

from __future__ import annotations

from typing import Any

from lvr_trainer.config import ConfigError, FrameSampling, TrainerConfig, parse_config
from lvr_trainer.runnable import attention_heads, check_runnable

from lvr_operator.api.dataset import LongVideoDatasetSpec
from lvr_operator.api.jobs import JobSpecBase, RLJobSpec

DATA_MOUNT = "/data"
LOCAL_CACHE = "/dev/shm/lvr-cache"
DEFAULT_MIN_PIXELS = FrameSampling.model_fields["min_pixels"].default


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` wins; nested mappings merge key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def dataset_jsonl(ds: LongVideoDatasetSpec) -> str:
    """Where a pod reads the rows: the s3:// URI, or the path under the PVC mount."""
    src = ds.source.jsonl
    if ds.source.pvc and not src.startswith(("s3://", "/")):
        return f"{DATA_MOUNT}/{src}"
    return src


def cache_uri(spec: JobSpecBase, ds: LongVideoDatasetSpec | None) -> str:
    """The job's own S3 cache, else the dataset's (so the cached embeddings are reused), else /dev/shm."""
    for cache in (spec.cache, ds.cache if ds else None):
        if cache is not None and cache.s3 is not None:
            return cache.s3.uri()
    return LOCAL_CACHE


def derived_sections(spec: JobSpecBase, ds: LongVideoDatasetSpec | None, model_uri: str | None) -> dict[str, Any]:
    """The parts of the trainer config that come from the other spec fields (documented defaults for
    the rest: the trainer's own, e.g. 1000 steps; an RLJob gets `rl: {}`, GRPO's defaults)."""
    frames = spec.frames or (ds.frames if ds else None)
    data: dict[str, Any] = {"train": dataset_jsonl(ds) if ds else "s3://unresolved/dataset.jsonl"}
    sampling: dict[str, Any] = {"num_frames": frames} if frames else {}
    if ds is not None:      # the dataset's frame size, so that the jobs hit the embeddings it cached
        sampling.update(max_pixels=ds.max_pixels, min_pixels=min(DEFAULT_MIN_PIXELS, ds.max_pixels))
        if ds.source.videos:
            data["video_root"] = ds.source.videos
    if sampling:
        data["sampling"] = sampling
    user_model = spec.trainer.get("model") if isinstance(spec.trainer.get("model"), dict) else {}
    model: dict[str, Any] = {}
    if not ({"path", "preset"} & set(user_model)):
        if spec.model.preset:
            model["preset"] = spec.model.preset
        else:
            model["path"] = model_uri or "s3://unresolved/model"
    out = {"model": model, "data": data, "cache": {"uri": cache_uri(spec, ds)}, "output": {"dir": spec.output.uri},
           # the trainer's pre-flight memory plan on these GPUs (a run on GPUs checks it before loading weights)
           "parallel": {"gpu_memory": spec.resources.gpu_memory,
                        "memory_check": "warn" if spec.run_policy.admit_beyond_plan else "refuse"}}
    if isinstance(spec, RLJobSpec):
        out["rl"] = {}
        out["rollout"] = spec.rollout.trainer_section()
    return out


# The trainer's `rollout` keys that `spec.rollout` owns: the pods are built from those (a sidecar container or
# not, its engine, image and GPUs), so a second spelling in `spec.trainer.rollout` could only contradict them.
ROLLOUT_KEYS_OF_THE_SPEC = {"engine": "engine", "mode": "mode", "gpu_memory_utilization": "gpuMemoryUtilization",
                            "tensor_parallel": "tensorParallel", "sidecar_url": "port"}


def check_rollout_owned(trainer: dict[str, Any], source: str) -> None:
    """ConfigError when `spec.trainer.rollout` sets what `spec.rollout` says (one place for each setting)."""
    rollout = trainer.get("rollout") if isinstance(trainer.get("rollout"), dict) else {}
    for key, field in ROLLOUT_KEYS_OF_THE_SPEC.items():
        if key in rollout:
            raise ConfigError(f"{source}: key 'rollout.{key}': the pods are built from spec.rollout; set "
                              f"`spec.rollout.{field}` instead (and remove spec.trainer.rollout.{key})")


def build_trainer_config(spec: JobSpecBase, ds: LongVideoDatasetSpec | None, model_uri: str | None,
                         source: str) -> TrainerConfig:
    """Derived sections overlaid by `spec.trainer`, checked with the trainer's own rules
    (`lvr_trainer.runnable`: what `lvr sft|rl` would refuse at run time); raises ConfigError naming
    `source` and the key."""
    check_rollout_owned(spec.trainer, source)
    merged = deep_merge(derived_sections(spec, ds, model_uri), spec.trainer)
    cfg = parse_config(merged, source)
    world = spec.resources.nodes * max(spec.trainer_gpus(), 1)
    stage = "rl" if isinstance(spec, RLJobSpec) else "sft"
    check_runnable(cfg, stage=stage, source=source, world_size=world, heads=attention_heads(cfg.model))
    return cfg
