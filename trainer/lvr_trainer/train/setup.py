"""What every loop loads first: the policy (model, tokenizer, processor), a data split, the features."""

from __future__ import annotations

from pathlib import Path

import torch

from lvr_trainer.config import ModelConfig, TrainerConfig
from lvr_trainer.data.schema import VideoQARecord, read_records
from lvr_trainer.model.loading import load_model
from lvr_trainer.model.processor import VideoProcessor
from lvr_trainer.train.features import VideoFeatureSource


class DataError(ValueError):
    """A dataset that cannot be trained on (missing, or too many bad rows)."""


def load_policy(cfg: ModelConfig, device: torch.device, from_dir: str | Path | None = None):
    """(model, tokenizer, processor); `from_dir` (a checkpoint's model/) overrides `cfg`'s weights."""
    if from_dir is not None:
        cfg = cfg.model_copy(update={"path": str(from_dir), "preset": None})
    model, tokenizer = load_model(cfg, device)
    if cfg.path is not None and _has_processor_config(cfg.path):
        processor = VideoProcessor.from_pretrained(cfg.path)
    else:
        processor = VideoProcessor.from_model_config(model.config)
    return model, tokenizer, processor


def _has_processor_config(path: str) -> bool:
    p = Path(path)
    return p.is_dir() and any((p / n).is_file() for n in ("video_preprocessor_config.json",
                                                          "preprocessor_config.json"))


def load_split(path: str, max_bad_fraction: float) -> tuple[list[VideoQARecord], Path]:
    """Good records of a JSONL split and the directory relative video paths resolve against.

    Bad rows are skipped and counted; above `max_bad_fraction` the run stops with the first errors.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file {path} not found; set data.train / data.val to a JSONL file "
                        "(make one with `lvr data synth`)")
    good, bad = read_records(p)
    total = len(good) + len(bad)
    if total == 0:
        raise DataError(f"data file {path} has no records; point data.train / data.val at a non-empty JSONL "
                        "split (`lvr data synth` writes train/val/test)")
    if not good or len(bad) / total > max_bad_fraction:
        first = "; ".join(f"line {e.line}: {e.kind}: {e.message}" for e in bad[:3])
        raise DataError(f"{path}: {len(bad)} of {total} rows are bad (limit data.max_bad_row_fraction="
                        f"{max_bad_fraction}); run `lvr data validate {path}`. First: {first}")
    if bad:
        print(f"{path}: skipping {len(bad)} bad rows of {total}")
    return good, p.parent


def make_feature_source(model, processor, cfg: TrainerConfig, base_dir: Path, group=None) -> VideoFeatureSource:
    """Video features through the configured embedding cache (bypassed when the vision tower trains)."""
    from lvr_trainer.cache.front import EmbeddingCache

    trainable = not cfg.model.freeze_vision
    cache = EmbeddingCache.from_config(cfg.cache) if not trainable else None
    return VideoFeatureSource(model, processor, cfg.data.sampling, base_dir, cache, trainable, group)
