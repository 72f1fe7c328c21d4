"""The trainer config a job's pods read: spec fields the operator derives, overlaid by `spec.trainer`.

Validated with the trainer's own models (lvr_trainer.config), so a bad key is reported here, as an
InvalidSpec condition, instead of as a crash loop in the pods.
"""

from __future__ import annotations

from typing import Any

from lvr_trainer.config import ConfigError, TrainerConfig, parse_config

from lvr_operator.api.dataset import LongVideoDatasetSpec
from lvr_operator.api.jobs import JobSpecBase

DATA_MOUNT = "/data"
LOCAL_CACHE = "/dev/shm/lvr-cache"


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
    """The parts of the trainer config that come from the other spec fields."""
    frames = spec.frames or (ds.frames if ds else None)
    data: dict[str, Any] = {"train": dataset_jsonl(ds) if ds else "s3://unresolved/dataset.jsonl"}
    if frames:
        data["sampling"] = {"num_frames": frames}
    user_model = spec.trainer.get("model") if isinstance(spec.trainer.get("model"), dict) else {}
    model: dict[str, Any] = {}
    if not ({"path", "preset"} & set(user_model)):
        model["path"] = model_uri or "s3://unresolved/model"
    return {"model": model, "data": data, "cache": {"uri": cache_uri(spec, ds)},
            "output": {"dir": spec.output.uri}}


def build_trainer_config(spec: JobSpecBase, ds: LongVideoDatasetSpec | None, model_uri: str | None,
                         source: str) -> TrainerConfig:
    """Derived sections overlaid by `spec.trainer`; raises ConfigError naming `source` and the key."""
    merged = deep_merge(derived_sections(spec, ds, model_uri), spec.trainer)
    cfg = parse_config(merged, source)
    world = spec.resources.nodes * max(spec.resources.gpus_per_node, 1)
    sp = cfg.parallel.sequence_parallel
    if world % sp:
        fits = [d for d in range(1, world + 1) if world % d == 0]
        raise ConfigError(
            f"{source}: key 'parallel.sequence_parallel': {sp} does not divide the {world} GPUs "
            f"({spec.resources.nodes} node(s) x {spec.resources.gpus_per_node}); use one of "
            f"{', '.join(map(str, fits))}, or change spec.resources")
    return cfg
