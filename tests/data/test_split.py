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
