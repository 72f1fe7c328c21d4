"""`lvr rl` on 2 gloo ranks sharing one rollout sidecar (as 2 GPUs of one pod do), the policy FSDP-sharded
over both: only local rank 0 pushes the weights, once per step, in 1 MiB buckets whose gathers both ranks
take part in; a barrier keeps the other rank from generating before the push lands; both ranks' requests
are served with the version the trainer pushed."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

SCRIPT = r"""
import json, os, sys
sys.path.insert(0, {tests!r})
from conftest import tiny_config
from pathlib import Path
from lvr_trainer.train.rl import run_rl
cfg = tiny_config(Path({data!r}), Path({out!r}),
                  train={{"steps": 3, "batch_size": 2, "grad_accum": 1, "torch_threads": 1}},
                  rl={{"group_size": 4, "max_new_tokens": 8, "kl_coef": 0.0}},
                  rollout={{"mode": "sidecar", "sidecar_url": {url!r}, "weight_bucket_mb": 1}},
                  parallel={{"strategy": "fsdp", "sequence_parallel": 1}})
summary = run_rl(cfg)
Path({out!r}, "done-" + os.environ["RANK"]).write_text(json.dumps(summary["steps"]))
from lvr_trainer.parallel.world import leave_world
leave_world()     # as `lvr rl|sft` ends: every rank leaves its process groups together
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_share_one_sidecar_and_push_once_per_step(tmp_path, tiny_data, make_config):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    out = tmp_path / "out"
    config = tmp_path / "server.yaml"
    config.write_text(yaml.safe_dump(make_config().model_dump(mode="json", exclude_none=True)))
    server = subprocess.Popen([sys.executable, "-m", "lvr_trainer.cli", "rollout-server", "--config", str(config),
                               "--port", str(port)], stdout=subprocess.PIPE, text=True)
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), data=str(tiny_data), out=str(out), url=url))
    try:
        from lvr_trainer.rollout.client import RemoteRolloutEngine

        RemoteRolloutEngine(url).wait_ready(120, poll_s=0.3)
        res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              str(script)], capture_output=True, text=True, timeout=420, check=False,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert res.returncode == 0, res.stderr[-3000:]
        assert (out / "done-0").read_text() == (out / "done-1").read_text() == "3"
        assert server.wait(timeout=30) == 0          # local rank 0 shut it down at the end
    finally:
        server.kill()
    # one push per step (3 versions, not 6) and both ranks' rollouts served: 2 ranks x 3 steps x 1 call
    summary = server.stdout.read()
    assert re.search(r"stopped at weight version 3 after 6 requests, 48 replies, \d+ tokens, 3 weight loads",
                     summary), summary
