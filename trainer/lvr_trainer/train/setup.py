"""What every loop loads first: the policy (model, tokenizer, processor), a data split, the features."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from lvr_trainer.config import ModelConfig, TrainerConfig
from lvr_trainer.data.location import DatasetUnavailable, is_s3, open_dataset
from lvr_trainer.data.schema import VideoQARecord, read_records
from lvr_trainer.model.loading import load_model
from lvr_trainer.model.processor import VideoProcessor
from lvr_trainer.inputs.features import VideoFeatureSource


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


def load_split(path: str, max_bad_fraction: float,
               video_root: str | None = None) -> tuple[list[VideoQARecord], str]:
    """Good records of a JSONL split, each with `video` resolved, and the base it was resolved against.

    `path` is a local file or an s3:// URI (downloaded, `data.location`). Relative videos resolve against
    `video_root` (a directory or s3:// prefix) when given, else the JSONL's directory; the records come
    back with `video` an absolute path or an s3:// URI, so later readers need no base. Bad rows are
    skipped and counted; above `max_bad_fraction` the run stops with the first errors.
    """
    try:
        dataset = open_dataset(path, video_root)
    except DatasetUnavailable as err:
        raise DataError(f"{err} (the URI is data.train / data.val, or `lvr eval --data`)") from None
    if not dataset.local.is_file():
        raise DataError(f"data file {path} not found; set data.train / data.val to a JSONL file "
                        "(make one with `lvr data synth`)")
    good, bad = read_records(dataset.local)
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
    base = dataset.video_base if is_s3(dataset.video_base) else os.path.abspath(dataset.video_base)
    return [r.model_copy(update={"video": r.video_path(base)}) for r in good], base


class UnreadableVideos:
    """Training records whose video turns out unreadable once training runs (corrupt, truncated, gone):
    each is skipped, replaced in its batch by the next readable record so every rank keeps its batch
    shape, counted (`data/unreadable_videos`) and named once; above `data.max_bad_row_fraction` of the
    split the run stops with a DataError. A store or network outage (VideoUnavailable) is not the
    video's fault and is raised as it is."""

    def __init__(self, total: int, max_fraction: float):
        self.total, self.max_fraction = total, max_fraction
        self.bad: dict[int, str] = {}

    def substitute(self, indices: list[int], records: list[VideoQARecord], source) -> list[int]:
        """`indices` with each unreadable record replaced by the next readable one (features loaded)."""
        return [self._readable(i, records, source) for i in indices]

    def _readable(self, i: int, records: list[VideoQARecord], source) -> int:
        from lvr_trainer.data.s3_videos import VideoUnavailable
        from lvr_trainer.data.video import VideoError

        for j in (k % self.total for k in range(i, i + self.total)):
            if j in self.bad:
                continue
            try:
                source(records[j])
                return j
            except VideoUnavailable:
                raise
            except VideoError as err:
                self._mark(j, records[j], err)
        raise DataError(f"no readable video left in the {self.total} training records")

    def _mark(self, j: int, record: VideoQARecord, err: Exception) -> None:
        self.bad[j] = f"{record.video}: {err}"
        print(f"data: skipping record {record.id}: unreadable video {self.bad[j]}", file=sys.stderr)
        if len(self.bad) > self.max_fraction * self.total:
            first = "; ".join(list(self.bad.values())[:3])
            raise DataError(f"{len(self.bad)} of {self.total} training records have unreadable videos (limit "
                            f"data.max_bad_row_fraction={self.max_fraction}); fix or drop them (`lvr data "
                            f"validate` lists them). First: {first}")


def make_feature_source(model, processor, cfg: TrainerConfig, base_dir: str | Path,
                        group=None) -> VideoFeatureSource:
    """Video features through the configured embedding cache (bypassed when the vision tower trains).
    `base_dir` resolves relative videos; `load_split`'s records have none left, so its base is only kept."""
    from lvr_trainer.cache.embedding_cache import EmbeddingCache

    trainable = not cfg.model.freeze_vision
    cache = EmbeddingCache.from_config(cfg.cache) if not trainable else None
    return VideoFeatureSource(model, processor, cfg.data.sampling, base_dir, cache, trainable, group,
                              cfg.cache.memory_bytes)
