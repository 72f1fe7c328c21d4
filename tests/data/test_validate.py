"""`lvr data validate` on a file mixing every kind of bad row with good ones."""

import json
import subprocess
import sys

import pytest

from lvr_trainer.config import FrameSampling
from lvr_trainer.data.validate import validate_file


@pytest.fixture()
def mixed_file(small_dataset, tmp_path):
    out, _ = small_dataset
    good = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    videos = out / "videos"
    first = sorted(videos.glob("*.mp4"))[0]
    (tmp_path / "cut.mp4").write_bytes(first.read_bytes()[:3000])
    (tmp_path / "junk.mp4").write_bytes(b"garbage" * 50)
    for g in good:
        g["video"] = str(out / g["video"])  # absolute, so the file can live elsewhere
    base = good[0]
    lines = [json.dumps(g) for g in good[:6]]
    lines += [
        '{"id": "broken", ',                                             # json
        json.dumps({**base, "id": "noq", "question": None}),             # schema
        json.dumps({**base, "id": "extra", "colour": "red"}),            # schema (unknown field)
        json.dumps({**base, "id": "badans", "answer": "E"}),             # answer
        json.dumps({**base}),                                            # duplicate_id
        json.dumps({**base, "id": "gone", "video": "videos/none.mp4"}),  # video_missing (relative)
        json.dumps({**base, "id": "cut", "video": str(tmp_path / "cut.mp4")}),    # video_truncated
        json.dumps({**base, "id": "junk", "video": str(tmp_path / "junk.mp4")}),  # video_corrupt
        json.dumps({**base, "id": "remote", "video": "s3://bucket/v.mp4"}),       # not checked here
        "",
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_bad_row_is_counted_and_the_scan_goes_on(mixed_file):
    report = validate_file(mixed_file, FrameSampling(num_frames=8))
    assert report.total == 15
    assert report.counts() == {"json": 1, "schema": 2, "answer": 1, "duplicate_id": 1, "video_missing": 1,
                               "video_corrupt": 1, "video_truncated": 1}
    assert report.valid == 7 and report.remote_unchecked == 1
    by_id = {e.id: e for e in report.errors}
    assert by_id["gone"].line == 12 and "none.mp4" in by_id["gone"].message
    assert "'question'" in by_id["noq"].message and "'colour'" in by_id["extra"].message
    assert report.videos_checked == 5  # 2 videos shared by the 6 good rows (each decoded once) + 3 bad


def test_too_few_frames(small_dataset):
    out, _ = small_dataset
    report = validate_file(out / "train.jsonl", FrameSampling(num_frames=8), min_frames=500)
    assert report.counts() == {"video_too_short": report.total}


def _run(*args):
    return subprocess.run([sys.executable, "-m", "lvr_trainer.cli", "data", "validate", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_cli_exit_code_follows_the_error_rate(mixed_file):
    strict = _run(mixed_file)
    assert strict.returncode == 1 and "FAILED" in strict.stderr
    assert "video_truncated" in strict.stdout and "line 13 (cut)" in strict.stdout
    lenient = _run(mixed_file, "--max-error-rate", "0.6")
    assert lenient.returncode == 0, lenient.stderr
    report = json.loads(_run(mixed_file, "--json", "--max-error-rate", "0.6").stdout)
    assert report["invalid"] == 8 and report["passed"] is True and report["errors"]["schema"] == 2


def test_cli_clean_dataset_passes(small_dataset):
    out, _ = small_dataset
    res = _run(out / "val.jsonl")
    assert res.returncode == 0 and "0 invalid" in res.stdout


def test_cli_missing_file_is_a_clear_error(tmp_path):
    res = _run(tmp_path / "nope.jsonl")
    assert res.returncode == 2 and "nope.jsonl" in res.stderr and "Traceback" not in res.stderr
