"""Benchmark: `lvr data build` against a local OpenAI-compatible server with a fixed artificial latency.

Real mp4 videos (`lvr data synth`) are built into a dataset at concurrency 1, 4 and 16 against the
scripted server of the tests (`lvr_localcluster.chat_server`, a child process on loopback) that sleeps
`--latency` seconds before every reply. Each run starts with an empty journal. The table gives calls
and seconds per video, and the bound the server's latency sets, calls/video x latency / concurrency:
when seconds per video sit near it, the pipeline is bound by the server, not by our client. A last row
at zero latency shows our own ceiling (frame decoding, JPEG, JSON, HTTP on loopback).

    .venv/bin/python bench/data_build.py [--videos 12] [--latency 0.2] [--concurrency 1 4 16]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from lvr_localcluster.chat_server import ChatServer
from lvr_trainer.cli import main
from lvr_trainer.data.synth import SynthSpec, synthesise
from lvr_trainer.utils.table import format_table


def make_videos(root: Path, n: int) -> Path:
    synthesise(root / "synth", SynthSpec(videos=n, seconds=16, fps=4, width=112, height=112, events=8, seed=3))
    folder = root / "videos"
    folder.mkdir()
    for mp4 in sorted((root / "synth" / "videos").glob("*.mp4")):
        shutil.copy(mp4, folder / mp4.name)
    return folder


def one_run(root: Path, videos: Path, n_videos: int, latency: float, concurrency: int) -> list:
    tag = f"c{concurrency}-l{latency:g}"
    server = ChatServer(root / f"{tag}.log.jsonl", {"model": "bench", "latency": latency})
    url = server.start()
    try:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            rc = main(["data", "build", "--videos", str(videos), "--out", str(root / tag), "--captioner", url,
                       "--reasoner", url, "--clip-seconds", "8", "--questions-per-category", "3",
                       "--concurrency", str(concurrency)])
        seconds = time.perf_counter() - t0
    finally:
        server.stop()
    assert rc == 0, f"build failed at concurrency {concurrency}"
    calls = len(server.requests())
    bound = calls / n_videos * latency / concurrency
    return [concurrency, latency, calls, round(calls / n_videos, 2), round(seconds, 2),
            round(seconds / n_videos, 3), round(bound, 3), f"{bound / (seconds / n_videos):.0%}" if latency else "-"]


def run(args) -> None:
    root = Path(tempfile.mkdtemp(prefix="lvr-bench-build-"))
    try:
        videos = make_videos(root, args.videos)
        rows = [one_run(root, videos, args.videos, args.latency, c) for c in args.concurrency]
        rows.append(one_run(root, videos, args.videos, 0.0, max(args.concurrency)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"lvr data build: {args.videos} videos of 16 s (2 clips of 8 s, 4 frames each), 3 questions per "
          f"category, blind filter on; server latency {args.latency:g} s per call; machine: "
          f"{platform.machine()}, {os.cpu_count()} cores")
    print(format_table(["concurrency", "latency s", "calls", "calls/video", "seconds", "s/video",
                        "server bound s/video", "bound/actual"], rows))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=12, help="videos to build (default 12)")
    p.add_argument("--latency", type=float, default=0.2, help="seconds the server sleeps per call (default 0.2)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], help="levels (default 1 4 16)")
    run(p.parse_args())
