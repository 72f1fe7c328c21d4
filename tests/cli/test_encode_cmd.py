"""`lvr encode --max-error-rate`: videos that fail to decode are skipped, counted and listed (real H.264
files and real broken ones); the command fails only above the rate, and the summary stays small enough
for a Kubernetes termination message."""

from __future__ import annotations

import json
import socket

import pytest
from lvr_trainer.cli import main
from lvr_trainer.cli.encode_cmd import (LISTED_FAILURES, REASON_CHARS, SUMMARY_BYTES, VIDEO_CHARS, clip,
                                        failed_listing, fit_summary)
from lvr_trainer.data.synth import SynthSpec, synthesise

ROW = {"question": "q?", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer": "A",
       "category": "temporal", "duration": 8.0}


@pytest.fixture(scope="module")
def good_videos(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth-encode")
    synthesise(out, SynthSpec(videos=2, seconds=8, fps=8, width=112, height=112, events=8, seed=9))
    return sorted(str(p) for p in (out / "videos").glob("*.mp4"))


def _write(path, videos):
    path.write_text("".join(json.dumps({**ROW, "id": f"q{i}", "video": v}) + "\n" for i, v in enumerate(videos)))
    return path


@pytest.fixture()
def half_bad(good_videos, tmp_path):
    """Four videos: two good, one that is not a video, one that does not exist (relative to the JSONL)."""
    (tmp_path / "junk.mp4").write_bytes(b"not a video" * 40)
    return _write(tmp_path / "d.jsonl", [*good_videos, str(tmp_path / "junk.mp4"), "gone.mp4"])


def _encode(data, cache, *extra):
    return main(["encode", "--data", str(data), "--cache", str(cache), "--frames", "4", "--json", *extra])


def test_bad_videos_are_skipped_listed_and_judged_by_the_rate(half_bad, tmp_path, capsys):
    assert _encode(half_bad, tmp_path / "c") == 1                  # default 0: any failure fails
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert (summary["videos"], summary["encoded"], summary["failed"], summary["max_error_rate"]) == (4, 2, 2, 0.0)
    assert [f["video"] for f in summary["failed_videos"]] == [str(tmp_path / "junk.mp4"), str(tmp_path / "gone.mp4")]
    assert summary["failed_videos"][0]["error"].startswith("corrupt: ")
    assert summary["failed_videos"][1]["error"].startswith("missing: ")
    assert "2 of 4 videos could not be encoded (missing or not decodable: 50.0%)" in err and "--max-error-rate 0" in err
    assert _encode(half_bad, tmp_path / "c", "--max-error-rate", "0.5") == 0   # at the rate: passes
    again = json.loads(capsys.readouterr().out)
    assert (again["hits"], again["encoded"], again["failed"]) == (2, 0, 2)       # the good ones were cached
    assert _encode(half_bad, tmp_path / "c", "--max-error-rate", "0.4") == 1
    capsys.readouterr()


def test_text_summary_names_each_skipped_video(half_bad, tmp_path, capsys):
    assert main(["encode", "--data", str(half_bad), "--cache", str(tmp_path / "c"), "--frames", "4",
                 "--max-error-rate", "1"]) == 0
    out = capsys.readouterr().out
    assert f"skipped {tmp_path / 'junk.mp4'}: corrupt" in out and f"skipped {tmp_path / 'gone.mp4'}: missing" in out


def test_many_failures_keep_the_summary_under_the_termination_message_cap(tmp_path, capsys):
    deep = "/".join(["d" * 200] * 3)  # long paths and long reasons (the reason repeats the path)
    data = _write(tmp_path / "d.jsonl", [f"{deep}/video-{i:02d}.mp4" for i in range(25)])
    assert _encode(data, tmp_path / "c", "--max-error-rate", "1") == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed)
    assert len(printed.encode()) <= SUMMARY_BYTES and summary["failed"] == 25
    assert len(summary["failed_videos"]) == LISTED_FAILURES
    assert summary["failed_videos"][0]["video"].endswith("/video-00.mp4")  # the file name survives clipping
    assert all(len(f["video"]) <= VIDEO_CHARS and len(f["error"]) <= REASON_CHARS for f in summary["failed_videos"])


def test_the_worst_case_summary_still_fits():
    failed = [("s3://" + "b" * 400 + f"/v{i}.mp4", "corrupt: " + "x" * 900) for i in range(50)]
    summary = {"videos": 10**9, "encoded": 10**9, "hits": 10**9, "failed": 10**9,
               "failed_videos": failed_listing(failed), "max_error_rate": 0.123456, "bad_rows": 10**9,
               "tokens": 10**15, "bytes_written": 10**15, "bytes_read": 10**15, "hit_rate": 0.1234,
               "corrupt": 10**9, "seconds": 123456.78, "cache": "s3://" + "c" * 200}
    fitted = fit_summary(summary)
    assert len(json.dumps(fitted, indent=2).encode()) <= SUMMARY_BYTES
    assert len(fitted["failed_videos"]) == LISTED_FAILURES  # clipping alone leaves room for all ten
    assert clip("abcdefghij", 7, keep_end=True) == "a...hij" and clip("abcdefghij", 7) == "abcd..."
    assert clip("short", 7) == "short"


def test_a_rate_outside_0_1_is_refused(half_bad, tmp_path, capsys):
    assert _encode(half_bad, tmp_path / "c", "--max-error-rate", "1.5") == 2
    assert "--max-error-rate must be between 0 and 1" in capsys.readouterr().err


def test_an_unreachable_cache_fails_whatever_the_rate(half_bad, tmp_path, monkeypatch, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("LVR_S3_ENDPOINT", closed)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.delenv("LVR_S3_SECRET_DIR", raising=False)
    assert _encode(half_bad, "s3://lvr-test/cache", "--max-error-rate", "1", "--timeout", "0.5") == 2
    assert "unreachable" in capsys.readouterr().err
