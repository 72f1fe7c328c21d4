"""A small synthetic dataset made once per test session (real H.264 files)."""

from __future__ import annotations

import pytest

from lvr_trainer.data.synth import SynthSpec, synthesise

SMALL = SynthSpec(videos=6, seconds=16, fps=8, width=112, height=112, events=8, seed=7)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    manifest = synthesise(out, SMALL)
    return out, manifest


S3_VARS = ("LVR_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "LVR_S3_SECRET_DIR")


@pytest.fixture()
def s3_env(s3_server, tmp_path, monkeypatch):
    """The S3 variables set, an empty local object cache (JSONL and videos), and no URI remembered from
    an earlier test; returns the cache directory."""
    from lvr_trainer.data import s3_videos as remote

    for name in S3_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(remote.CACHE_DIR_ENV, str(tmp_path / "objects"))
    monkeypatch.setattr(remote, "_verified", {})
    return tmp_path / "objects"
