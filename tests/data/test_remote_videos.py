"""s3:// videos on a real S3 server: fetched once into the local video cache, then validated, encoded
and fed to the loops like local files."""

from __future__ import annotations

import json
import socket
import time
import uuid
from pathlib import Path

import pytest
from lvr_trainer.cli import main
from lvr_trainer.config import FrameSampling
from lvr_trainer.data import s3_videos as remote
from lvr_trainer.data.schema import read_records
from lvr_trainer.data.synth import SynthSpec, synthesise
from lvr_trainer.data.validate import validate_file
from minio import Minio



@pytest.fixture(scope="module")
def remote_data(tmp_path_factory, s3_server):
    """(local JSONL, s3 JSONL, {s3 URI: local file}): two tiny videos uploaded under a fresh prefix."""
    out = tmp_path_factory.mktemp("synth-remote")
    synthesise(out, SynthSpec(videos=2, seconds=8, fps=8, width=112, height=112, events=8, seed=5))
    client = Minio(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, secure=False)
    prefix = f"videos-{uuid.uuid4().hex[:8]}"
    uris = {}
    for mp4 in sorted((out / "videos").glob("*.mp4")):
        client.fput_object(s3_server.bucket, f"{prefix}/{mp4.name}", str(mp4))
        uris[f"s3://{s3_server.bucket}/{prefix}/{mp4.name}"] = mp4
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    local, s3 = out / "local.jsonl", out / "s3.jsonl"
    local.write_text("".join(json.dumps({**r, "video": str(out / r["video"])}) + "\n" for r in rows))
    s3.write_text("".join(json.dumps({**r, "video": f"s3://{s3_server.bucket}/{prefix}/{Path(r['video']).name}"})
                          + "\n" for r in rows))
    return local, s3, uris


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_fetch_downloads_once_atomically(remote_data, s3_env, monkeypatch):
    _, _, uris = remote_data
    uri, original = next(iter(uris.items()))
    path, downloaded = remote.fetch(uri)
    assert downloaded and Path(path).read_bytes() == original.read_bytes()
    assert Path(path).parent.parent == s3_env and Path(path).name.endswith(original.name)
    assert [p.name for p in Path(path).parent.iterdir()] == [Path(path).name]  # no temporary files left
    mtime = Path(path).stat().st_mtime_ns
    assert remote.fetch(uri) == (path, False) and Path(path).stat().st_mtime_ns == mtime
    from lvr_trainer.storage.s3 import S3Store

    monkeypatch.setattr(S3Store, "object_size", lambda *a: pytest.fail("a verified URI is not asked again"))
    assert remote.local_video(uri) == path
    assert remote.local_video(str(original)) == str(original)  # local paths pass through


def test_a_truncated_local_copy_is_fetched_again(remote_data, s3_env):
    _, _, uris = remote_data
    uri, original = next(iter(uris.items()))
    path, _ = remote.fetch(uri)
    Path(path).write_bytes(original.read_bytes()[:1000])
    assert remote.fetch(uri) == (path, True) and Path(path).read_bytes() == original.read_bytes()


def test_validate_checks_s3_videos_and_reports_missing_objects(remote_data, s3_env, s3_server, capsys):
    _, s3, uris = remote_data
    good = s3.read_text()
    first = json.loads(good.splitlines()[0])
    gone = f"s3://{s3_server.bucket}/nowhere/{uuid.uuid4().hex}.mp4"
    mixed = s3.with_name("s3-mixed.jsonl")
    mixed.write_text(good + json.dumps({**first, "id": "gone", "video": gone}) + "\n")

    report = validate_file(s3, FrameSampling(num_frames=8))
    assert report.errors == [] and report.videos_checked == len(uris) and report.remote_unchecked == 0
    assert main(["data", "validate", str(s3), "--frames", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passed"] is True

    report = validate_file(mixed, FrameSampling(num_frames=8))
    assert report.counts() == {"video_missing": 1}
    assert report.errors[0].id == "gone" and gone in report.errors[0].message


def test_validate_without_an_endpoint_says_why_s3_videos_were_skipped(remote_data, s3_env, monkeypatch, capsys):
    _, s3, _ = remote_data
    monkeypatch.delenv("LVR_S3_ENDPOINT")
    report = validate_file(s3, FrameSampling(num_frames=8))
    assert report.errors == [] and report.videos_checked == 0
    assert report.remote_unchecked == report.total and "LVR_S3_ENDPOINT" in report.remote_reason
    assert main(["data", "validate", str(s3), "--frames", "8"]) == 0
    assert "not checked: no S3 endpoint configured" in capsys.readouterr().out


def test_lvr_encode_caches_s3_videos_under_their_content_key(remote_data, s3_env, tmp_path, capsys):
    local, s3, uris = remote_data
    base = ["encode", "--cache", str(tmp_path / "cache"), "--frames", "4", "--json"]
    assert main([*base, "--data", str(s3)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["videos"], first["encoded"], first["failed"]) == (len(uris), len(uris), 0)
    assert main([*base, "--data", str(local)]) == 0  # the same bytes read locally: the same keys
    second = json.loads(capsys.readouterr().out)
    assert (second["encoded"], second["hits"]) == (0, len(uris))


def test_loops_feature_source_reads_s3_records(remote_data, s3_env):
    from lvr_trainer.config import ModelConfig
    from lvr_trainer.model.loading import load_model
    from lvr_trainer.model.processor import VideoProcessor
    from lvr_trainer.inputs.features import VideoFeatureSource

    _, s3, _ = remote_data
    record = read_records(s3)[0][0]
    model = load_model(ModelConfig(preset="tiny"))[0]
    sampling = FrameSampling(num_frames=4, max_pixels=112 * 112)
    processor = VideoProcessor.from_model_config(model.config)
    frozen = VideoFeatureSource(model, processor, sampling, s3.parent)(record)
    trained = VideoFeatureSource(model, processor, sampling, s3.parent, trainable_vision=True)(record)
    assert frozen.embeds.shape[0] == 32 and frozen.grid_thw.tolist() == trained.grid_thw.tolist()
    assert trained.pixel_values is not None


def test_unreachable_endpoint_fails_fast_with_a_clear_message(remote_data, s3_env, monkeypatch, capsys, tmp_path):
    _, s3, uris = remote_data
    monkeypatch.setenv("LVR_S3_ENDPOINT", _closed_port_url())
    start = time.monotonic()
    with pytest.raises(remote.VideoUnavailable, match="did not answer.*LVR_S3_ENDPOINT"):
        remote.local_video(next(iter(uris)), timeout_s=0.5)
    assert main(["data", "validate", str(s3), "--frames", "8"]) == 2
    err = capsys.readouterr().err
    assert "cannot check s3:// videos" in err and "did not answer" in err and "Traceback" not in err
    assert main(["encode", "--data", str(s3), "--cache", str(tmp_path / "c"), "--frames", "4"]) == 2
    assert "did not answer" in capsys.readouterr().err
    assert time.monotonic() - start < 5  # connection refused: no retries worth waiting for
