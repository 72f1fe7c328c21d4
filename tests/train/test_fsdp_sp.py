"""FSDP x sequence parallelism on one mesh: the whole language model sharded over every rank, SP peers
included, with Ulysses inside each SP group. FSDP x SP equals the reference layouts — losses to 1e-5 and
weights after two AdamW steps to float order — for SFT (DP 2 x SP 2 on 4 processes vs 1 process) and for RL
with the shared prefix and a sharded reference model (SP 2 vs 1 process; DP 2 x SP 2 vs DDP over the same 2
DP ranks, whose rollouts are seeded per DP rank); hybrid sharding over 2 launches equals 1 process; and a
checkpoint of each layout resumes on a different number of ranks."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

SCRIPT = r"""
import json, os, sys
sys.path.insert(0, {tests!r})
from conftest import tiny_config
from pathlib import Path
import torch.distributed as dist
from lvr_trainer.train.rl import run_rl
from lvr_trainer.train.sft import run_sft
cfg = tiny_config(Path({data!r}), Path({out!r}),
                  train={{"steps": {steps}, "batch_size": {batch}, "grad_accum": 1, "torch_threads": 1,
                         "precision": "fp32", "save_every": 1, "keep_last": 5, "eval_every": 0,
                         "gradient_checkpointing": {ac}}},
                  optim={{"lr": 0.01, "warmup_steps": 0, "grad_clip": 1000.0}},
                  rl={{"group_size": 4, "max_new_tokens": 8, "kl_coef": 0.05, "shared_prefix": True,
                      "rewards": [{{"name": "format", "weight": 1.0}},
                      {{"name": "lvr_trainer.algo.shaped_rewards:format_progress", "weight": 1.0}}]}},
                  parallel={{"strategy": {strategy!r}, "sequence_parallel": {sp}}})
summary = (run_rl if {stage!r} == "rl" else run_sft)(cfg, resume={resume})
rank = dist.get_rank() if dist.is_initialized() else 0
if {stage!r} == "rl":
    keys = ("reward/total", "actor/loss", "actor/ref_kl", "actor/grad_norm")
    rows = [{{k: h[k] for k in keys if k in h}} for h in summary["history"]]
else:
    rows = [{{"loss": x}} for x in summary["losses"]]
Path({out!r}, f"history-{{rank}}.json").write_text(json.dumps({{"rows": rows, "start": summary.get("start_step", 0)}}))
from lvr_trainer.parallel.world import leave_world
leave_world()     # as `lvr rl|sft` ends: every rank leaves its process groups together
"""


def _run(tmp_path: Path, data: Path, name: str, stage: str, nproc: int, *, strategy: str = "ddp", sp: int = 1,
         batch: int = 2, steps: int = 2, out: Path | None = None, resume: bool = False,
         ac: bool = False, nodes: int = 1) -> tuple[dict, Path]:
    out = out or tmp_path / name
    script = tmp_path / f"{name}.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), data=str(data), out=str(out), stage=stage,
                                    strategy=strategy, sp=sp, batch=batch, steps=steps, resume=resume, ac=ac))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nodes > 1:        # `nodes` launches of nproc / nodes processes on this machine (static rendezvous)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}",
                                   f"--nproc_per_node={nproc // nodes}", f"--node_rank={n}", "--master_addr=127.0.0.1",
                                   f"--master_port={port}", str(script)], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for n in range(nodes)]
        errors = [p.communicate(timeout=600)[1] for p in procs]
        assert all(p.returncode == 0 for p in procs), errors[0][-4000:] + errors[-1][-4000:]
    else:
        cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                str(script)] if nproc > 1 else [sys.executable, str(script)])
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, env=env)
        assert res.returncode == 0, res.stderr[-4000:]
    return json.loads((out / "history-0.json").read_text()), out / "run" / "checkpoints"


def _grad_norms(checkpoints: Path) -> list[float]:
    """train/grad_norm of each logged step (AdamW hides a gradient's scale from the weights; the norm does not)."""
    rows = [json.loads(line) for line in (checkpoints.parent / "metrics.jsonl").read_text().splitlines() if line]
    return [r["train/grad_norm"] for r in rows if "train/grad_norm" in r]


def test_sft_fsdp_over_dp2_x_sp2_equals_one_process_and_resumes_on_two_ranks(tmp_path, tiny_data, assert_same_update):
    one, one_ckpt = _run(tmp_path, tiny_data, "one", "sft", 1, batch=2)
    four, four_ckpt = _run(tmp_path, tiny_data, "four", "sft", 4, strategy="fsdp", sp=2, batch=1)
    assert len(one["rows"]) == len(four["rows"]) == 2
    for a, b in zip(one["rows"], four["rows"]):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
    assert _grad_norms(four_ckpt) == pytest.approx(_grad_norms(one_ckpt), rel=1e-5)
    assert_same_update(one_ckpt / "step-000002" / "model", four_ckpt / "step-000002" / "model")
    # the 4-rank run's step-1 checkpoint, resumed on 2 ranks (FSDP over SP 2): step 2 equals the 1-process run
    resumed = tmp_path / "resumed"
    (resumed / "run" / "checkpoints").mkdir(parents=True)
    shutil.copytree(four_ckpt / "step-000001", resumed / "run" / "checkpoints" / "step-000001")
    (resumed / "run" / "checkpoints" / "latest").write_text("step-000001")
    again, again_ckpt = _run(tmp_path, tiny_data, "again", "sft", 2, strategy="fsdp", sp=2, batch=2, out=resumed,
                             resume=True)
    assert again["start"] == 1 and len(again["rows"]) == 1
    assert again["rows"][0]["loss"] == pytest.approx(one["rows"][1]["loss"], abs=1e-5)
    assert_same_update(one_ckpt / "step-000002" / "model", again_ckpt / "step-000002" / "model")


def test_rl_fsdp_over_dp2_x_sp2_with_shared_prefix_equals_ddp_over_dp2(tmp_path, tiny_data, assert_same_update):
    """Same DP ranks (so the same sampling seeds, hence the same replies), the same micro-batches: only the
    layout differs — DDP keeps the whole model per rank, FSDP x SP holds a quarter of it (and of the
    reference) per rank, splits each packed row over 2 ranks and recomputes each layer in backward."""
    ddp, ddp_ckpt = _run(tmp_path, tiny_data, "ddp", "rl", 2, strategy="ddp", sp=1, batch=1)
    fsdp, fsdp_ckpt = _run(tmp_path, tiny_data, "fsdp", "rl", 4, strategy="fsdp", sp=2, batch=1, ac=True)
    assert len(ddp["rows"]) == len(fsdp["rows"]) == 2
    for step, (a, b) in enumerate(zip(ddp["rows"], fsdp["rows"])):
        assert a["reward/total"] == b["reward/total"], step
        for key in ("actor/loss", "actor/ref_kl", "actor/grad_norm"):
            assert b[key] == pytest.approx(a[key], abs=1e-5, rel=1e-5), (step, key)
    assert fsdp["rows"][1]["actor/ref_kl"] > 0
    assert_same_update(ddp_ckpt / "step-000002" / "model", fsdp_ckpt / "step-000002" / "model")


def test_sft_hybrid_sharding_over_two_nodes_equals_one_process(tmp_path, tiny_data, assert_same_update):
    """hsdp on 2 launches of 2 processes (a 2 x 2 mesh: sharded within a node, replicated across), SP 2 inside
    each node: the 1-process losses and weights; its sharded checkpoint (replicated shards written once)
    resumes on 1 process."""
    one, one_ckpt = _run(tmp_path, tiny_data, "one", "sft", 1, batch=2)
    hybrid, hybrid_ckpt = _run(tmp_path, tiny_data, "hybrid", "sft", 4, strategy="hsdp", sp=2, batch=1, nodes=2)
    for a, b in zip(one["rows"], hybrid["rows"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
    assert _grad_norms(hybrid_ckpt) == pytest.approx(_grad_norms(one_ckpt), rel=1e-5)
    assert_same_update(one_ckpt / "step-000002" / "model", hybrid_ckpt / "step-000002" / "model")
    resumed = tmp_path / "resumed"
    shutil.copytree(hybrid_ckpt / "step-000001", resumed / "run" / "checkpoints" / "step-000001")
    (resumed / "run" / "checkpoints" / "latest").write_text("step-000001")
    again, again_ckpt = _run(tmp_path, tiny_data, "again", "sft", 1, batch=2, out=resumed, resume=True)
    assert again["start"] == 1 and again["rows"][0]["loss"] == pytest.approx(one["rows"][1]["loss"], abs=1e-5)
    assert_same_update(one_ckpt / "step-000002" / "model", again_ckpt / "step-000002" / "model")


def test_rl_fsdp_over_sp2_with_shared_prefix_equals_one_process(tmp_path, tiny_data, assert_same_update):
    """One SP group of 2 ranks holding the whole model between them (DP 1, so the same sampling seed as one
    process): the 1-process RL run's rewards, losses, KL and gradient norms, and its weights after 2 steps."""
    one, one_ckpt = _run(tmp_path, tiny_data, "one", "rl", 1, batch=1)
    two, two_ckpt = _run(tmp_path, tiny_data, "two", "rl", 2, strategy="fsdp", sp=2, batch=1)
    for step, (a, b) in enumerate(zip(one["rows"], two["rows"], strict=True)):
        assert a["reward/total"] == b["reward/total"], step
        for key in ("actor/loss", "actor/ref_kl", "actor/grad_norm"):
            assert b[key] == pytest.approx(a[key], abs=1e-5, rel=1e-5), (step, key)
    assert two["rows"][1]["actor/ref_kl"] > 0
    assert_same_update(one_ckpt / "step-000002" / "model", two_ckpt / "step-000002" / "model")
