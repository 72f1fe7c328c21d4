"""Datasets whose JSONL lives in S3 (a real S3 server): `lvr data validate`, `lvr encode` and the loops'
`load_split` fetch the JSONL, resolve its rows' relative videos against its s3:// directory or a video
root, and say what to do when the JSONL is not there."""

from __future__ import annotations

import io
import json
import socket
import time
import uuid
from pathlib import Path

import pytest
from lvr_trainer.cli import main
from lvr_trainer.config import FrameSampling
from lvr_trainer.data import s3_videos as remote
from lvr_trainer.data.location import DatasetUnavailable, join_location, open_dataset, parent_location
from lvr_trainer.data.schema import parse_row
from lvr_trainer.data.synth import SynthSpec, synthesise
from lvr_trainer.data.validate import validate_file
from lvr_trainer.data.split import DataError, load_split
from minio import Minio

ROW = {"id": "q", "question": "q?", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer": "A",
       "category": "temporal", "duration": 8.0}


def test_s3_locations_keep_their_scheme():
    assert parent_location("s3://b/data/train.jsonl") == "s3://b/data"
    assert parent_location("s3://b/train.jsonl") == "s3://b"
    assert parent_location("data/train.jsonl") == "data"
    assert join_location("s3://b/data", "videos/v.mp4") == "s3://b/data/videos/v.mp4"
    assert join_location("s3://b/data/splits/", "../videos/./v.mp4") == "s3://b/data/videos/v.mp4"
    assert join_location("s3://b", "v.mp4") == "s3://b/v.mp4"
    assert join_location("/data", "videos/v.mp4") == "/data/videos/v.mp4"
    record = parse_row(1, json.dumps({**ROW, "video": "videos/a.mp4"}))
    assert record.video_path("s3://b/d") == "s3://b/d/videos/a.mp4"  # Path() would give s3:/b/d/...


@pytest.fixture(scope="module")
def s3_dataset(tmp_path_factory, s3_server):
    """(local synth dir, s3://…/prefix): train.jsonl with relative `videos/…` rows beside its videos at
    the prefix, and the same JSONL at prefix/rows/train.jsonl, away from its videos."""
    out = tmp_path_factory.mktemp("synth-s3-jsonl")
    synthesise(out, SynthSpec(videos=2, seconds=8, fps=8, width=112, height=112, events=8, seed=11))
    client = Minio(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, secure=False)
    prefix = f"ds-{uuid.uuid4().hex[:8]}"
    for mp4 in sorted((out / "videos").glob("*.mp4")):
        client.fput_object(s3_server.bucket, f"{prefix}/videos/{mp4.name}", str(mp4))
    client.fput_object(s3_server.bucket, f"{prefix}/train.jsonl", str(out / "train.jsonl"))
    client.fput_object(s3_server.bucket, f"{prefix}/rows/train.jsonl", str(out / "train.jsonl"))
    return out, f"s3://{s3_server.bucket}/{prefix}"


def test_validate_reads_an_s3_jsonl_and_resolves_its_relative_videos(s3_dataset, s3_env, capsys):
    out, prefix = s3_dataset
    rows = len((out / "train.jsonl").read_text().splitlines())
    report = validate_file(f"{prefix}/train.jsonl", FrameSampling(num_frames=8))
    assert report.path == f"{prefix}/train.jsonl" and report.total == rows
    assert report.errors == [] and report.videos_checked == 2
    assert main(["data", "validate", f"{prefix}/train.jsonl", "--frames", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passed"] is True


def test_video_root_replaces_the_jsonl_directory(s3_dataset, s3_env, tmp_path, capsys):
    out, prefix = s3_dataset
    away = f"{prefix}/rows/train.jsonl"  # its directory holds no videos
    report = validate_file(away, FrameSampling(num_frames=8))
    assert report.counts() == {"video_missing": report.total}
    assert f"{prefix}/rows/videos/" in report.errors[0].message  # an s3:// URI, not s3:/
    assert main(["data", "validate", away, "--frames", "8", "--video-root", prefix, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["videos_checked"] == 2
    local = tmp_path / "train.jsonl"  # a local JSONL whose videos are in S3
    local.write_text((out / "train.jsonl").read_text())
    assert main(["data", "validate", str(local), "--frames", "8", "--video-root", prefix]) == 0
    assert main(["data", "validate", away, "--frames", "8", "--video-root", str(out)]) == 0  # and the reverse
    capsys.readouterr()


def test_load_split_returns_s3_records_the_feature_source_can_read(s3_dataset, s3_env):
    from lvr_trainer.config import ModelConfig
    from lvr_trainer.model.loading import load_model
    from lvr_trainer.model.processor import VideoProcessor
    from lvr_trainer.inputs.features import VideoFeatureSource

    _, prefix = s3_dataset
    records, base = load_split(f"{prefix}/train.jsonl", 0.0)
    assert base == prefix and all(r.video.startswith(f"{prefix}/videos/") for r in records)
    rooted, root = load_split(f"{prefix}/rows/train.jsonl", 0.0, video_root=prefix)
    assert root == prefix and [r.video for r in rooted] == [r.video for r in records]
    model = load_model(ModelConfig(preset="tiny"))[0]
    source = VideoFeatureSource(model, VideoProcessor.from_model_config(model.config),
                                FrameSampling(num_frames=4, max_pixels=112 * 112), base)
    assert source(records[0]).embeds.shape[0] == 32  # 4 frames of 112x112 -> 2 x 4 x 4 tokens


def test_an_edited_jsonl_is_fetched_again(s3_server, s3_env):
    client = Minio(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, secure=False)
    key = f"edit-{uuid.uuid4().hex[:8]}/split.jsonl"
    for answer in ("A", "B"):  # the same size: a size check alone would keep the stale copy
        data = (json.dumps({**ROW, "answer": answer, "video": "v.mp4"}) + "\n").encode()
        client.put_object(s3_server.bucket, key, io.BytesIO(data), len(data))
        records, _ = load_split(f"s3://{s3_server.bucket}/{key}", 0.0)
        assert records[0].answer == answer


def test_a_missing_jsonl_names_the_uri_and_the_fix(s3_server, s3_env, tmp_path, capsys):
    uri = f"s3://{s3_server.bucket}/nowhere/{uuid.uuid4().hex}.jsonl"
    with pytest.raises(DatasetUnavailable, match="not found: no such object in bucket.*upload the JSONL"):
        open_dataset(uri)
    with pytest.raises(DataError, match=f"{uri}.*upload the JSONL.*data.train"):
        load_split(uri, 0.0)
    assert main(["data", "validate", uri]) == 2
    err = capsys.readouterr().err
    assert uri in err and "upload the JSONL" in err and "Traceback" not in err
    assert main(["encode", "--data", uri, "--cache", str(tmp_path / "c"), "--frames", "4"]) == 2
    assert uri in capsys.readouterr().err
    assert main(["data", "validate", "s3://no-such-bucket-here/train.jsonl"]) == 2
    assert "dataset s3://no-such-bucket-here/train.jsonl not found" in capsys.readouterr().err


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_an_unusable_endpoint_is_a_clear_error(s3_dataset, s3_env, monkeypatch, capsys):
    _, prefix = s3_dataset
    monkeypatch.setenv("LVR_S3_ENDPOINT", _closed_port_url())
    start = time.monotonic()
    assert main(["data", "validate", f"{prefix}/train.jsonl"]) == 2
    err = capsys.readouterr().err
    assert f"cannot read dataset {prefix}/train.jsonl" in err and "did not answer" in err
    assert time.monotonic() - start < 5  # connection refused: no long retries
    monkeypatch.delenv("LVR_S3_ENDPOINT")
    assert main(["data", "validate", f"{prefix}/train.jsonl"]) == 2
    assert "no S3 endpoint configured: set LVR_S3_ENDPOINT" in capsys.readouterr().err


def test_lvr_encode_reads_an_s3_jsonl_with_a_video_root(s3_dataset, s3_env, tmp_path, capsys):
    _, prefix = s3_dataset
    args = ["encode", "--data", f"{prefix}/rows/train.jsonl", "--video-root", prefix,
            "--cache", str(tmp_path / "cache"), "--frames", "4", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["videos"], summary["encoded"], summary["failed"]) == (2, 2, 0)
    assert Path(s3_env).is_dir()  # the JSONL and videos were fetched into the configured cache
