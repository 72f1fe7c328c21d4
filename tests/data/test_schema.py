import json

from lvr_trainer.data.schema import VideoQARecord, parse_row, read_records, RowError, write_records

GOOD = {
    "id": "q1", "video": "videos/a.mp4", "question": "Which colour came first?",
    "options": {"A": "red", "B": "blue", "C": "green", "D": "white"}, "answer": "B",
    "reasoning": "blue is square 1", "category": "temporal", "duration": 60.0,
}


def row(**changes):
    data = {**GOOD, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not ...})


def test_good_row_parses_and_resolves_relative_video(tmp_path):
    rec = parse_row(1, row())
    assert isinstance(rec, VideoQARecord)
    assert rec.video_path(tmp_path) == str(tmp_path / "videos/a.mp4")
    assert parse_row(1, row(video="s3://bucket/v.mp4")).video_path(tmp_path) == "s3://bucket/v.mp4"
    assert parse_row(1, row(video="/abs/v.mp4")).video_path(tmp_path) == "/abs/v.mp4"


def test_malformed_json_is_a_row_error_not_an_exception():
    err = parse_row(3, '{"id": "q1", ')
    assert isinstance(err, RowError) and err.kind == "json" and err.line == 3
    assert parse_row(4, "[1, 2]").kind == "json"


def test_schema_errors_name_the_field():
    err = parse_row(2, row(question=...))
    assert err.kind == "schema" and "'question'" in err.message and err.id == "q1"
    err = parse_row(2, row(colour="red"))
    assert err.kind == "schema" and "'colour'" in err.message
    err = parse_row(2, row(duration="long"))
    assert err.kind == "schema" and "'duration'" in err.message
    err = parse_row(2, row(category="funny"))
    assert err.kind == "schema" and "'category'" in err.message


def test_answer_must_be_an_option_letter_and_options_complete():
    err = parse_row(5, row(answer="E"))
    assert err.kind == "answer" and "'answer'" in err.message
    err = parse_row(5, row(options={"A": "x", "B": "y", "C": "z"}))
    assert err.kind == "schema" and "missing D" in err.message
    assert parse_row(5, row(options={"A": "x", "B": "y", "C": "z", "D": " "})).kind == "schema"


def test_write_then_read_round_trip(tmp_path):
    recs = [parse_row(1, row(id=f"q{i}")) for i in range(3)]
    path = tmp_path / "d.jsonl"
    assert write_records(path, recs) == 3
    path.write_text(path.read_text() + "\n{bad\n")
    good, bad = read_records(path)
    assert [r.id for r in good] == ["q0", "q1", "q2"] and good == recs
    assert len(bad) == 1 and bad[0].line == 5
