"""Real mp4 videos (`lvr data synth`), a scripted OpenAI-compatible server on loopback, and a helper that
runs `lvr data build` in this process."""

from __future__ import annotations

import itertools
import shutil

import pytest

from lvr_localcluster.chat_server import ChatServer
from lvr_trainer.data.synth import SynthSpec, synthesise

VIDEOS = SynthSpec(videos=3, seconds=16, fps=4, width=112, height=112, events=8, seed=11)


@pytest.fixture(scope="session")
def videos(tmp_path_factory):
    """A folder of 3 real H.264 videos, 16 s at 4 fps, 112x112 (two 8 s clips each at --clip-seconds 8)."""
    out = tmp_path_factory.mktemp("build-synth")
    synthesise(out, VIDEOS)
    folder = out / "only-videos"
    folder.mkdir()
    for mp4 in sorted((out / "videos").glob("*.mp4")):
        shutil.copy(mp4, folder / mp4.name)
    return folder


@pytest.fixture()
def chat_server(tmp_path):
    """`start(config, log_name)` -> (url, server): a scripted server in a child process; all stopped at
    the end of the test."""
    servers: list[ChatServer] = []
    names = itertools.count()

    def start(config: dict | None = None, log_name: str | None = None):
        server = ChatServer(tmp_path / (log_name or f"server-{next(names)}.jsonl"),
                            {"model": "fake-model", **(config or {})})
        servers.append(server)
        return server.start(), server

    yield start
    for server in servers:
        server.stop()


def build_args(videos, out, url, *extra) -> list[str]:
    return ["data", "build", "--videos", str(videos), "--out", str(out), "--captioner", url, "--reasoner", url,
            "--clip-seconds", "8", "--questions-per-category", "3", *extra]


def answered(log: list[dict]) -> set[str]:
    """Keys of the requests the server answered with a 200."""
    return {e["key"] for e in log if e["status"] == 200}
