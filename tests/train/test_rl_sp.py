"""`lvr rl` under sequence parallelism: 2 GRPO steps with sequence_parallel=2 on 2 gloo processes equal the
same run on 1 process, with the reference prefill (kl_coef > 0) and rank-0 validation in between."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r"""
import json, os, sys
sys.path.insert(0, {tests!r})
from conftest import tiny_config
from pathlib import Path
import lvr_trainer.train.rl_rollout as rollout
from lvr_trainer.train.rl import run_rl
if int(os.environ.get("RANK", "0")) != 0:  # an SP peer samples its share of the group's prompts only
    sample = rollout.sample_groups
    def its_share(engine, model, tokenizer, records, *args):
        assert len(records) == 1, f"an SP peer sampled {{len(records)}} prompts, not its share (1 of 2)"
        return sample(engine, model, tokenizer, records, *args)
    rollout.sample_groups = its_share
rewards = [{{"name": "format", "weight": 1.0}},
           {{"name": "lvr_trainer.algo.shaped_rewards:format_progress", "weight": 1.0}}]
cfg = tiny_config(Path({data!r}), Path({out!r}),
                  train={{"steps": 2, "batch_size": 2, "grad_accum": 1, "torch_threads": 1, "eval_every": 1}},
                  optim={{"lr": 0.01, "warmup_steps": 0, "grad_clip": 1000.0}},
                  rl={{"group_size": 8, "max_new_tokens": 12, "kl_coef": 0.05, "rewards": rewards,
                      "shared_prefix": {shared}}},
                  eval={{"limit": 2, "max_new_tokens": 4}},
                  parallel={{"strategy": "ddp", "sequence_parallel": {sp}}})
summary = run_rl(cfg)
import torch.distributed as dist
rank = dist.get_rank() if dist.is_initialized() else 0
keys = ("reward/total", "actor/loss", "actor/ref_kl", "rollout/reply_len", "val/accuracy")
# one file per rank: the ranks' stdout lines interleave
Path({out!r}, f"history-{{rank}}.json").write_text(json.dumps([{{k: h[k] for k in keys if k in h}} for h in summary["history"]]))
from lvr_trainer.parallel.world import leave_world
leave_world()     # as `lvr rl|sft` ends: every rank leaves its process groups together
"""

KEYS = ("reward/total", "actor/loss", "actor/ref_kl", "rollout/reply_len")


def _run(tmp_path: Path, tiny_data: Path, name: str, nproc: int, shared: bool) -> tuple[dict[int, list[dict]], Path]:
    out = tmp_path / name
    script = tmp_path / f"{name}.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), data=str(tiny_data), out=str(out), sp=nproc,
                                    shared=shared))
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            str(script)] if nproc > 1 else [sys.executable, str(script)])
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    histories = {rank: json.loads((out / f"history-{rank}.json").read_text()) for rank in range(nproc)}
    return histories, out / "run/checkpoints/step-000002/model"


def test_sequence_parallel_rl_equals_single_process(tmp_path, tiny_data, assert_same_update):
    """SP=2 (one SP group of 2 ranks holding the same 2 prompts x 4 replies) against 1 process; the SP run
    scores with the shared prefix (each prompt once, its replies attending to the gathered prompt through
    the grouped mask), the single process one sequence per reply, so this also checks SP x shared prefix.

    The group's 2 prompts are spread over its ranks, each sampling one (seeded as its place in the whole
    call) and all-gathering the replies, so both SP ranks report the very rewards of the single process,
    which samples both prompts in one call (same seed, same prompts). Policy and reference log-probs come from
    the Ulysses prefill, so losses and the reference KL agree to 1e-5. After 2 AdamW steps the weights
    agree up to float summation order: the SP gradient is a sum of per-shard parts, and Adam divides by
    sqrt(v), which magnifies rounding on near-zero gradients; a wrong reduction (SP parts not summed, or
    averaged) would differ by the size of the update itself, so the tolerance is 2% of the largest update.
    Rank 1 may sample one prompt only (its `sample_groups` asserts it).
    Validation (eval_every=1) runs on every rank (each scores a share; the counts are summed).
    """
    one, one_dir = _run(tmp_path, tiny_data, "one", nproc=1, shared=False)
    two, two_dir = _run(tmp_path, tiny_data, "two", nproc=2, shared=True)
    assert len(one[0]) == len(two[0]) == len(two[1]) == 2
    for step, (a, b, c) in enumerate(zip(one[0], two[0], two[1])):
        assert a["reward/total"] == b["reward/total"] == c["reward/total"], step  # same replies everywhere
        for key in KEYS:
            assert b[key] == pytest.approx(a[key], abs=1e-5), (step, key)
            assert c[key] == pytest.approx(b[key], abs=1e-6), (step, key)
        assert "val/accuracy" in a and b["val/accuracy"] == c["val/accuracy"]  # every rank scores a share
    assert two[0][1]["actor/ref_kl"] > 0  # the second step's reference prefill sees a moved policy
    assert_same_update(one_dir, two_dir)
