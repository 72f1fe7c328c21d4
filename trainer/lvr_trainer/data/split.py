"""A JSONL split read for training or evaluation: its good records with videos resolved, its bad rows
counted against `data.max_bad_row_fraction`."""

from __future__ import annotations

import os

from lvr_trainer.data.location import DatasetUnavailable, is_s3, open_dataset
from lvr_trainer.data.schema import VideoQARecord, read_records


class DataError(ValueError):
    """A dataset that cannot be trained on (missing, or too many bad rows)."""


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
