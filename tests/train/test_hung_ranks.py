"""No hung jobs: a rank that stalls (a video that takes minutes to decode) or dies mid-step makes the other
ranks fail within parallel.timeout_s, with a message naming the stalled rank and its phase."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lvr_trainer.parallel.heartbeat import Beat, describe, lost_peer


def test_describe_names_the_rank_that_is_behind():
    beats = [Beat(0, 3, 5, "update", 100.0), Beat(1, 3, 1, "features", 100.5), Beat(2, 3, 5, "update", 101.0)]
    text = describe(beats, 0, 110.0)
    assert text.startswith("rank 1 is behind: still in 'features' of step 3 (entered 10 s ago)")
    assert "while rank 0 waits in 'update' of step 3" in text and "rank 2" not in text
    assert "rank 1 is behind: still in 'update' of step 2" in describe(
        [Beat(0, 3, 5, "update", 100.0), Beat(1, 2, 5, "update", 50.0)], 0, 110.0)
    same = describe([Beat(0, 3, 5, "update", 100.0), Beat(1, 3, 5, "update", 99.0)], 0, 110.0)
    assert "every rank that reported is in 'update' of step 3" in same
    assert "rank(s) 1 never reported" in describe([Beat(0, 1, 1, "features", 1.0), None], 0, 2.0)
    assert describe([], 0, 1.0) == ""
    pods = [Beat(0, 3, 2, "update", 1.0, "job-worker-0", "127.11.0.1"), Beat(1, 3, 2, "update", 1.0, "job-worker-1",
                                                                           "127.22.0.2")]
    error = "[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.22.0.2]:35141"
    assert lost_peer(pods, error) == "rank 1 (on job-worker-1)"
    assert lost_peer(pods, "no address here") == ""


WORKER = r"""
import os, sys, time
sys.path.insert(0, {tests!r})
rank = int(os.environ["RANK"])
os.environ["LVR_TERMINATION_LOG"] = os.path.join({out!r}, f"term-{{rank}}")
from lvr_trainer.train.unreadable_videos import UnreadableVideos
calls = {{"n": 0}}
original = UnreadableVideos.substitute
def slow_on_rank_1(self, *args, **kwargs):
    calls["n"] += 1
    if rank == 1 and calls["n"] == 3:        # step 3's video: minutes to decode
        time.sleep(120)
    return original(self, *args, **kwargs)
UnreadableVideos.substitute = slow_on_rank_1
from lvr_trainer.cli import main
sys.exit(main(["sft", "--config", {config!r}]))
"""


@pytest.mark.distributed
def test_a_stalled_rank_fails_the_others_within_the_timeout_naming_it(make_config, tmp_path):
    cfg = make_config(train={"steps": 50, "batch_size": 1, "save_every": 0, "torch_threads": 1},
                      parallel={"strategy": "ddp", "timeout_s": 10})
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent), out=str(tmp_path), config=str(config)))
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script)], capture_output=True, text=True, timeout=240, check=False,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    took = time.monotonic() - t0
    assert res.returncode != 0
    assert took < 100, f"the job hung for {took:.0f} s (the stalled rank sleeps 120 s, the timeout is 10 s)"
    message = (tmp_path / "term-0").read_text()
    assert "parallel.timeout_s (10 s)" in message, message
    assert "rank 1 is behind: still in 'features' of step 3" in message, message


LIVENESS_WORKER = r"""
import os, sys
import torch.distributed as dist
from lvr_trainer.parallel import heartbeat
dist.init_process_group("gloo")
heartbeat.publish("forward_backward", 33)
dist.barrier()
if dist.get_rank() == 1:
    os._exit(9)                           # gone without a word, like a SIGKILLed pod
print("REPORT", heartbeat.report("Read error: no address in this text", peer_lost=True), flush=True)
"""


@pytest.mark.distributed
def test_a_lost_peer_is_named_by_liveness_when_the_error_has_no_address(tmp_path):
    """The socket error does not always name the peer's address (or names one no beat published): the rank
    whose liveness counter stopped is the lost one."""
    script = tmp_path / "worker.py"
    script.write_text(LIVENESS_WORKER)
    port = 20000 + os.getpid() % 20000
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "WORLD_SIZE": "2"}
    procs = [subprocess.Popen([sys.executable, str(script)], env={**env, "RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    out = procs[0].communicate(timeout=120)[0]
    procs[1].wait(timeout=60)
    assert "REPORT the lost peer is rank 1 (on " in out, out[-3000:]
    assert "every rank that reported is in 'forward_backward' of step 33" in out, out[-3000:]
