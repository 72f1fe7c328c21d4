"""`UnreadableVideos`: a video that fails to decode mid-run is replaced in its batch, counted and bounded."""

from __future__ import annotations

import pytest

from lvr_trainer.data.split import DataError


def _record(i: int, video: str):
    from lvr_trainer.data.schema import VideoQARecord

    return VideoQARecord.model_validate({"id": f"q{i}", "video": video, "question": "which?", "answer": "A",
                                         "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "category": "temporal", "duration": 60})


def test_unreadable_videos_are_replaced_counted_and_bounded(capsys):
    from lvr_trainer.data.s3_videos import VideoUnavailable
    from lvr_trainer.data.video import VideoError
    from lvr_trainer.train.unreadable_videos import UnreadableVideos

    records = [_record(i, f"/v/{i}.mp4") for i in range(10)]
    broken = {"/v/2.mp4", "/v/3.mp4"}
    calls = []

    def source(r):
        calls.append(r.video)
        if r.video in broken:
            raise VideoError(r.video, "corrupt", "decoder cannot open it")

    skip = UnreadableVideos(len(records), max_fraction=0.2)
    assert skip.substitute([1, 2, 9], records, source) == [1, 4, 9]      # 2 and 3 broken: the next readable
    assert sorted(skip.bad) == [2, 3] and "q2" in capsys.readouterr().err
    calls.clear()
    assert skip.substitute([3, 2], records, source) == [4, 4] and "/v/2.mp4" not in calls   # known bad: not retried
    broken.add("/v/5.mp4")
    with pytest.raises(DataError, match=r"3 of 10 training records have unreadable videos.*max_bad_row_fraction=0.2"):
        skip.substitute([5], records, source)

    def outage(r):
        raise VideoUnavailable(r.video, "unavailable", "endpoint unreachable")
    with pytest.raises(VideoUnavailable):      # the store's fault, not the video's: not skipped
        UnreadableVideos(10, 1.0).substitute([0], records, outage)
