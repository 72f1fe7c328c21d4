"""Training records whose video turns out unreadable only once training reads it."""

from __future__ import annotations

import sys

from lvr_trainer.data.s3_videos import VideoUnavailable
from lvr_trainer.data.schema import VideoQARecord
from lvr_trainer.data.split import DataError
from lvr_trainer.data.video import VideoError


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
