"""Frame sampling speed: our decord sampler vs. decoding every frame with PyAV.

A 10-minute 640x360 H.264 video (synthetic, 30 fps, x264 default GOP of 250) is made once and cached.
For 16, 64 and 256 frames, our sampler (`sample_frames`: decord seeks to the keyframe before each
sampled frame and decodes only from there, converting to RGB at the pixel budget's size) is timed
against decoding every frame with PyAV, both the naive way (every frame converted to an RGB array,
then the sampled ones kept) and a stronger baseline (every frame decoded, only kept ones converted).
All decoders single-threaded.

    .venv/bin/python bench/decode.py [--seconds 600] [--fps 30] [--cache DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from lvr_trainer.config import FrameSampling
from lvr_trainer.data.synth import SynthSpec, synthesise
from lvr_trainer.data.video import probe, sample_frames, uniform_indices
from lvr_trainer.utils.table import format_table


def make_video(cache: Path, seconds: float, fps: int) -> Path:
    spec = SynthSpec(videos=1, seconds=seconds, fps=fps, width=640, height=360, events=8, seed=0)
    out = cache / f"decode-{int(seconds)}s-{fps}fps"
    video = out / "videos" / "synth-0-00000.mp4"
    if not video.exists():
        t = time.perf_counter()
        synthesise(out, spec)
        print(f"made {video} in {time.perf_counter() - t:.1f}s")
    return video


def pyav_decode_all(path: Path, keep: set[int], convert_all: bool) -> tuple[list[np.ndarray], int]:
    import av

    kept, n = [], 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "NONE"  # like decord with num_threads=1: one core, a fair comparison
        for i, frame in enumerate(container.decode(stream)):
            if convert_all or i in keep:
                array = frame.to_ndarray(format="rgb24")
                if i in keep:
                    kept.append(array)
            n += 1
    return kept, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/lvr/bench"))
    args = ap.parse_args()
    video = make_video(Path(args.cache), args.seconds, args.fps)
    info = probe(str(video))
    print(f"video: {info.num_frames} frames, {info.width}x{info.height}, {info.fps:g} fps, "
          f"{video.stat().st_size / 1e6:.1f} MB; machine: {platform.machine()}, {os.cpu_count()} cores")
    rows = []
    for n in (16, 64, 256):
        t = time.perf_counter()
        s = sample_frames(str(video), FrameSampling(num_frames=n))
        ours = time.perf_counter() - t
        keep = set(uniform_indices(info.num_frames, n).tolist())
        timings = []
        for convert_all in (True, False):
            t = time.perf_counter()
            kept, decoded = pyav_decode_all(video, keep, convert_all)
            timings.append(time.perf_counter() - t)
            assert len(kept) == len(keep) and decoded == info.num_frames
        naive, strong = timings
        h, w = s.frames.shape[1:3]
        rows.append([n, f"{w}x{h}", round(ours, 2), round(n / ours, 1), round(naive, 2), round(n / naive, 2),
                     round(naive / ours, 1), round(strong, 2), round(strong / ours, 2)])
    print(format_table(["frames", "our size", "ours s", "ours frames/s", "PyAV naive s", "naive frames/s",
                        "speedup vs naive", "PyAV strong s", "speedup vs strong"], rows))


if __name__ == "__main__":
    main()
