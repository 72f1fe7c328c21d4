"""Parallel encode_video (frames split across 2 gloo ranks, all-gathered) == single process, fp32."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_parallel_encode_equals_single_process(tmp_path):
    from lvr_trainer.data.synth import SynthSpec, synthesise

    synthesise(tmp_path / "data", SynthSpec(videos=1, seconds=8, fps=8, width=112, height=112, seed=5))
    video = next((tmp_path / "data" / "videos").glob("*.mp4"))
    worker = Path(__file__).with_name("encode_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(worker), "--out", str(tmp_path), "--video", str(video)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        emb = result.pop("embedder")
        assert emb["hits"] == [False, True] and emb["vision_passes"] == 1, (rank, emb)
        assert emb["shape"] == emb["ref_shape"] and emb["max_abs_diff"] <= 1e-5, (rank, emb)
        for name, case in result.items():
            assert case["shape"] == case["ref_shape"], (rank, name)
            assert case["max_abs_diff"] <= 1e-5, (rank, name, case)
