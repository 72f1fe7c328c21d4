"""`load_split`: the errors a user sees for a missing, empty or mostly bad split, each naming the fix."""

from __future__ import annotations

import json

import pytest

from lvr_trainer.data.split import DataError, load_split


def test_missing_split_names_the_key_and_the_command(tmp_path):
    with pytest.raises(DataError, match="not found; set data.train / data.val.*lvr data synth"):
        load_split(str(tmp_path / "nope.jsonl"), 0.1)


def test_empty_split_says_it_is_empty(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="has no records"):
        load_split(str(tmp_path / "empty.jsonl"), 1.0)


def test_too_many_bad_rows_quote_the_first_error(tmp_path):
    good = {"id": "a", "video": "v.mp4", "question": "q?", "options": {"A": "w", "B": "x", "C": "y", "D": "z"}, "answer": "A",
            "category": "temporal", "duration": 8.0}
    path = tmp_path / "split.jsonl"
    path.write_text(json.dumps(good) + "\n" + "{not json\n")
    with pytest.raises(DataError, match=r"1 of 2 rows are bad.*lvr data validate.*line 2"):
        load_split(str(path), 0.1)
    records, base = load_split(str(path), 0.5)     # under the limit: the bad row is skipped and counted
    assert [r.id for r in records] == ["a"] and base == str(tmp_path)
    assert records[0].video == str(tmp_path / "v.mp4")  # resolved: later readers need no base


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


def test_activation_checkpointing_is_on_by_default_for_models_larger_than_small():
    from types import SimpleNamespace

    from lvr_trainer.config import TrainerConfig
    from lvr_trainer.train.run_start import wants_activation_checkpointing

    def model(hidden, layers):
        return SimpleNamespace(config=SimpleNamespace(text_config=SimpleNamespace(hidden_size=hidden,
                                                                                  num_hidden_layers=layers)))
    cfg = lambda **train: TrainerConfig.model_validate(  # noqa: E731
        {"model": {"preset": "tiny"}, "data": {"train": "t.jsonl"}, "output": {"dir": "o"}, "train": train})
    assert not wants_activation_checkpointing(cfg(), model(384, 4))          # small and below: off
    assert wants_activation_checkpointing(cfg(), model(3584, 28))            # 7B: on
    assert not wants_activation_checkpointing(cfg(gradient_checkpointing=False), model(3584, 28))
    assert wants_activation_checkpointing(cfg(gradient_checkpointing=True), model(64, 2))
