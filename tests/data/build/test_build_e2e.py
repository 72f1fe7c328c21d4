"""`lvr data build` end to end: real mp4 files, a scripted OpenAI-compatible server on loopback (a child
process), the journal, the filters, and `lvr data validate` on what comes out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from lvr_trainer.cli import main
from lvr_trainer.data.schema import read_records

from .conftest import answered, build_args

SPLIT_FILES = ("train.jsonl", "val.jsonl", "test.jsonl")


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def assert_valid_dataset(out: Path) -> list:
    records, by_split = [], {}
    for name in SPLIT_FILES:
        assert main(["data", "validate", str(out / name), "--frames", "4"]) == 0, name
        good, bad = read_records(out / name)
        assert not bad
        by_split[name] = {r.meta["video_id"] for r in good}
        records += good
    train, val, test = (by_split[name] for name in SPLIT_FILES)
    assert not (train & val) and not (val & test) and not (train & test)  # split by video
    assert (out / "train_cot.jsonl").read_text() == (out / "train.jsonl").read_text()
    assert all(r.reasoning for r in records)
    return records


def test_clean_build_filters_validates_and_reruns_from_the_journal(videos, tmp_path, chat_server, capsys):
    url, server = chat_server()
    out = tmp_path / "out"
    assert main(build_args(videos, out, url, "--concurrency", "4")) == 0
    printed = capsys.readouterr().out
    assert "| dropped: blind_answerable |" in printed and "| stage " in printed
    records = assert_valid_dataset(out)
    build = manifest(out)["build"]
    # The server's fixed pattern, per video: plot q3 duplicates q1, spatial q3 nearly does, goal q3 is
    # answerable blind, and all 9 temporal answers are A (the balance keeps 1).
    assert build["dropped"]["duplicate"] == 3 and build["dropped"]["near_duplicate"] == 3
    assert build["dropped"]["blind_answerable"] == 3 and build["dropped"]["letter_imbalance"] >= 8
    assert build["questions"] == {"generated": 36, "kept": len(records)}
    assert len(records) + sum(build["dropped"].values()) == 36
    assert Counter(r.category for r in records)["temporal"] == 1
    assert build["videos"] == {"found": 3, "built": 3, "skipped": 0} and build["clips"] == 6
    log = server.requests()
    assert Counter(e["kind"] for e in log) == {"caption": 6, "questions": 12, "blind": 30}
    assert len(answered(log)) == len(log) == build["calls"]["total"]["calls"]
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert Counter(r["reason"] for r in rejected) == Counter(build["dropped"])
    before = {name: (out / name).read_text() for name in SPLIT_FILES}
    assert main(build_args(videos, out, url, "--concurrency", "4")) == 0
    assert len(server.requests()) == len(log)  # nothing asked twice
    assert {name: (out / name).read_text() for name in SPLIT_FILES} == before
    assert manifest(out)["build"]["calls"]["total"]["journal"] == len(log)


FAULTS = [
    {"kind": "caption", "nth": [2], "fault": "status", "status": 429, "retry_after": 1},
    {"kind": "caption", "nth": [3], "fault": "status", "status": 500},
    {"kind": "questions", "nth": [1], "fault": "malformed"},
    {"kind": "questions", "nth": [2], "fault": "wrong_schema"},
    {"kind": "questions", "nth": [3], "fault": "stubborn"},
    {"kind": "questions", "nth": [4], "fault": "bad_items"},
    {"kind": "blind", "nth": [1], "fault": "slow", "seconds": 2.5},
    {"kind": "blind", "nth": [2], "fault": "status", "status": 400},
]


def test_faults_are_retried_repaired_or_dropped_with_a_reason(videos, tmp_path, chat_server):
    url, server = chat_server({"faults": FAULTS})
    out = tmp_path / "out"
    assert main(build_args(videos, out, url, "--concurrency", "4", "--timeout", "1", "--max-retries", "2")) == 0
    deadline = time.monotonic() + 10  # the slow reply is logged when the server wakes up, after the build
    while not any(e["fault"] == "slow" for e in server.requests()) and time.monotonic() < deadline:
        time.sleep(0.1)
    log = server.requests()
    by_key: dict[str, list[dict]] = {}
    for e in log:
        by_key.setdefault(e["key"], []).append(e)
    limited = next(v for v in by_key.values() if v[0]["status"] == 429)
    assert limited[-1]["status"] == 200 and limited[1]["t"] - limited[0]["t"] >= 0.9  # Retry-After: 1
    assert next(v for v in by_key.values() if v[0]["status"] == 500)[-1]["status"] == 200
    slow = next(v for v in by_key.values() if any(e["fault"] == "slow" for e in v))
    assert len(slow) >= 2 and any(e["status"] == 200 and not e["fault"] for e in slow)  # timed out at 1 s, asked again
    refused = [v for v in by_key.values() if any(e["status"] == 400 for e in v)]
    assert len(refused) == 1 and refused[0][-1]["status"] == 400  # a 400 is never retried
    assert Counter(e["kind"] for e in log)["repair"] == 4  # one per faulty questions reply
    build = manifest(out)["build"]
    assert build["dropped"]["reply_schema"] == 1              # stubborn: wrong twice
    assert "reply_unparseable" not in build["dropped"]        # malformed once, repaired
    assert build["dropped"]["answer"] == 1 and build["dropped"]["schema"] == 1  # bad items, twice
    assert build["dropped"]["call_failed"] == 1 and build["calls"]["blind"]["failed"] == 1
    assert build["retries"] >= 3
    assert_valid_dataset(out)


def test_server_dying_mid_run_then_rerun_repeats_no_call(videos, tmp_path, chat_server):
    ref_url, _ = chat_server()
    ref = tmp_path / "ref"
    assert main(build_args(videos, ref, ref_url, "--concurrency", "4")) == 0
    url, dying = chat_server({"die_after": 20})
    out = tmp_path / "out"
    assert main(build_args(videos, out, url, "--concurrency", "4", "--max-retries", "1")) == 2
    first = dying.requests()
    assert first[-1]["fault"] == "die" and 10 <= len(answered(first)) < 20
    journal = [json.loads(line) for line in (out / "build-journal.jsonl").read_text().splitlines()]
    assert {j["key"] for j in journal} == answered(first)  # every answered call was recorded
    url2, revived = chat_server()
    assert main(build_args(videos, out, url2, "--concurrency", "4")) == 0
    second = revived.requests()
    assert not answered(first) & {e["key"] for e in second}  # nothing asked again
    assert len(answered(first)) + len(second) == 48
    for name in SPLIT_FILES:
        assert (out / name).read_text() == (ref / name).read_text()


def test_ctrl_c_keeps_finished_calls(videos, tmp_path, chat_server):
    url, slow = chat_server({"latency": 0.25})
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "lvr_trainer.cli", *build_args(videos, out, url, "--concurrency", "2")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while len(answered(slow.requests())) < 8 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    first = answered(slow.requests())
    assert 8 <= len(first) < 48
    url2, fresh = chat_server()
    assert main(build_args(videos, out, url2, "--concurrency", "2")) == 0
    assert not first & {e["key"] for e in fresh.requests()}
    assert_valid_dataset(out)


def test_api_key_comes_from_env_or_file_never_the_command_line(videos, tmp_path, chat_server, monkeypatch, capsys):
    url, server = chat_server({"require_key": "sk-test-123"})
    monkeypatch.setenv("LVR_TEST_API_KEY", "sk-test-123")
    args = build_args(videos, tmp_path / "a", url, "--categories", "plot", "--no-blind-filter")
    assert main([*args, "--api-key-env", "LVR_TEST_API_KEY"]) == 0
    key_file = tmp_path / "key"
    key_file.write_text("sk-test-123\n")
    assert main([*build_args(videos, tmp_path / "b", url, "--categories", "goal", "--no-blind-filter"),
                 "--api-key-file", str(key_file)]) == 0
    capsys.readouterr()
    assert main([*args, "--api-key-env", "LVR_UNSET_KEY_VAR"]) == 2
    assert "LVR_UNSET_KEY_VAR" in capsys.readouterr().err
    key_file.write_text("sk-wrong")
    wrong = build_args(videos, tmp_path / "c", url, "--captioner-model", "m", "--reasoner-model", "m")
    assert main([*wrong, "--api-key-file", str(key_file)]) == 2
    assert "HTTP 401" in capsys.readouterr().err  # stops at the first refusal, says which key flags to check
    with pytest.raises(SystemExit):
        main([*args, "--api-key", "sk-test-123"])
    assert all("sk-test" not in line for line in (tmp_path / "a" / "manifest.json").read_text().splitlines())


def test_undecodable_video_is_skipped_and_named(videos, tmp_path, chat_server, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.mp4").write_bytes(next(videos.glob("*.mp4")).read_bytes())
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + b"garbage" * 50)
    url, _ = chat_server()
    out = tmp_path / "out"
    assert main(build_args(folder, out, url, "--no-blind-filter")) == 0
    printed = capsys.readouterr().out
    assert "broken.mp4" in printed
    build = manifest(out)["build"]
    assert build["videos"] == {"found": 2, "built": 1, "skipped": 1}
    assert "corrupt video" in build["skipped"][0]["reason"] or "truncated video" in build["skipped"][0]["reason"]


def test_s3_videos_to_s3_dataset(videos, tmp_path, chat_server, s3_server, s3_env, monkeypatch):
    import uuid

    from minio import Minio

    client = Minio(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, secure=False)
    prefix = f"build-{uuid.uuid4().hex[:8]}"
    for mp4 in sorted(videos.glob("*.mp4")):
        client.fput_object(s3_server.bucket, f"{prefix}/videos/{mp4.name}", str(mp4))
    monkeypatch.setenv("LVR_BUILD_CACHE_DIR", str(tmp_path / "work"))
    url, _ = chat_server()
    base = f"s3://{s3_server.bucket}/{prefix}"
    assert main(build_args(f"{base}/videos", f"{base}/data", url, "--no-blind-filter")) == 0
    names = {o.object_name for o in client.list_objects(s3_server.bucket, prefix=f"{prefix}/data/")}
    assert {f"{prefix}/data/{n}" for n in (*SPLIT_FILES, "train_cot.jsonl", "manifest.json")} <= names
    for name in SPLIT_FILES:
        assert main(["data", "validate", f"{base}/data/{name}", "--frames", "4"]) == 0
    assert main(build_args(videos, f"{base}/data2", url)) == 2  # local videos, s3:// out: refused, with why


def test_an_s3_build_retried_on_a_new_disk_repeats_no_call(videos, tmp_path, chat_server, s3_server, s3_env,
                                                           monkeypatch):
    """A preparation pod that dies half way (here: its model server) and is retried on another node: the
    journal kept next to the s3:// output (`OUT/.build/journal.jsonl`) is restored, no finished call repeats."""
    import uuid

    from minio import Minio

    client = Minio(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, secure=False)
    prefix = f"retry-{uuid.uuid4().hex[:8]}"
    for mp4 in sorted(videos.glob("*.mp4")):
        client.fput_object(s3_server.bucket, f"{prefix}/videos/{mp4.name}", str(mp4))
    base = f"s3://{s3_server.bucket}/{prefix}"
    args = lambda url, *more: build_args(f"{base}/videos", f"{base}/data", url, "--no-blind-filter",  # noqa: E731
                                         "--concurrency", "4", *more)
    monkeypatch.setenv("LVR_BUILD_CACHE_DIR", str(tmp_path / "first-pod"))
    url, dying = chat_server({"die_after": 10})
    assert main(args(url, "--max-retries", "1")) == 2
    first = answered(dying.requests())
    assert 5 <= len(first) < 10
    stored = client.get_object(s3_server.bucket, f"{prefix}/data/.build/journal.jsonl").read().decode()
    assert {json.loads(line)["key"] for line in stored.splitlines()} == first   # every answered call is there
    monkeypatch.setenv("LVR_BUILD_CACHE_DIR", str(tmp_path / "second-pod"))     # a new disk
    url2, revived = chat_server()
    assert main(args(url2)) == 0
    assert not first & {e["key"] for e in revived.requests()}                    # nothing asked again
