"""`lvr rl` under FSDP on 2 gloo ranks with validation on, and replies of very different lengths per rank:
before every rank took part in validation (and generate kept sharded ranks in step), this hung forever."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lvr_trainer.train.validation import rank_share

SCRIPT = r"""
import dataclasses, json, os, sys
sys.path.insert(0, {tests!r})
from conftest import tiny_config
from pathlib import Path
from lvr_trainer.rollout.hf import TransformersEngine
from lvr_trainer.train.rl import run_rl
if int(os.environ["RANK"]) == 1:   # this rank's replies (rollouts and validation) stop after 2 tokens
    generate = TransformersEngine.generate
    TransformersEngine.generate = lambda self, reqs, params: generate(
        self, reqs, dataclasses.replace(params, max_new_tokens=2))
cfg = tiny_config(Path({data!r}), Path({out!r}),
                  train={{"steps": 2, "batch_size": 2, "grad_accum": 1, "torch_threads": 1, "eval_every": 1}},
                  rl={{"group_size": 4, "max_new_tokens": 16, "kl_coef": 0.0}},
                  eval={{"limit": 3, "max_new_tokens": 16, "batch_size": 1}},
                  parallel={{"strategy": "fsdp", "sequence_parallel": 1}})
summary = run_rl(cfg)
rank = int(os.environ["RANK"])
Path({out!r}, f"history-{{rank}}.json").write_text(json.dumps(summary["history"]))
from lvr_trainer.parallel.world import leave_world
leave_world()     # as `lvr rl|sft` ends: every rank leaves its process groups together
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp_rl_with_validation_and_uneven_replies_finishes(tmp_path, tiny_data):
    script = tmp_path / "run.py"
    out = tmp_path / "out"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), data=str(tiny_data), out=str(out)))
    try:
        res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              str(script)], capture_output=True, text=True, timeout=420, check=False,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        pytest.fail("lvr rl with FSDP, validation on and uneven reply lengths hung (420 s)")
    assert res.returncode == 0, res.stderr[-3000:]
    h0, h1 = (json.loads((out / f"history-{r}.json").read_text()) for r in (0, 1))
    assert len(h0) == len(h1) == 2
    assert "val/accuracy" in h0[0] and h0[0]["val/accuracy"] == h1[0]["val/accuracy"]   # summed over ranks
    assert h1[0]["rollout/reply_len"] <= 2 < h0[0]["rollout/reply_len"]                 # uneven for real


def test_rank_share_is_equal_length_and_covers_every_record_once():
    records = list(range(7))
    shares = [rank_share(records, r, 3) for r in range(3)]
    assert [len(s) for s, _ in shares] == [3, 3, 3] and [n for _, n in shares] == [3, 2, 2]
    assert sorted(x for s, n in shares for x in s[:n]) == records
    assert rank_share([5], 1, 2) == ([5], 0)
