"""The LM head's work spread over the SP ranks: the scored positions (the replies, at the end of a row) all sit
in the last rank's shard, yet each of 2 ranks scores half of them, and the log-probs and the gradients of the
hidden states and the head equal one process scoring the whole row."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

WORKER = r"""
import json, os, sys
import torch, torch.distributed as dist
import lvr_trainer.parallel.sp_forward as spf
from lvr_trainer.parallel.grid import init_process_grid
grid = init_process_grid(2)
rank = grid.sp_rank
torch.manual_seed(0)
B, T, H, V = 2, 8, 6, 11
hidden_full = torch.randn(B, T, H, dtype=torch.float64)
targets = torch.full((B, T), -100)
targets[:, 5:] = torch.randint(0, V, (B, 3))                    # scored: positions 5-7, all in rank 1's shard
head = torch.nn.Linear(H, V, bias=False).double()
head.weight.data.normal_()
rows = []
inner = spf._chunk_logprobs
spf._chunk_logprobs = lambda h, *a: rows.append(h.shape[0]) or inner(h, *a)
hidden = hidden_full[:, rank * 4:(rank + 1) * 4].clone().requires_grad_(True)
lp = spf.spread_head_logprobs(hidden, head, targets[:, rank * 4:(rank + 1) * 4], grid, 1.0, 4096)
scored_rows = sum(rows)                                          # the forward's (backward recomputes them)
lp.sum().backward()
grad_w = head.weight.grad.clone()
dist.all_reduce(grad_w)                                          # the SP sum reduce_gradients makes
ref_hidden = hidden_full.clone().requires_grad_(True)
head.weight.grad = None
spf._chunk_logprobs = inner
ref = spf.token_logprobs(ref_hidden, head, targets)
ref.sum().backward()
out = {"rows": scored_rows, "lp": (lp - ref).abs().max().item(),
       "grad_h": (hidden.grad - ref_hidden.grad[:, rank * 4:(rank + 1) * 4]).abs().max().item(),
       "grad_w": (grad_w - head.weight.grad).abs().max().item()}
print("RESULT", json.dumps(out), flush=True)
"""


@pytest.mark.distributed
def test_each_sp_rank_scores_an_equal_share_and_the_result_is_exact(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(21000 + os.getpid() % 20000), "WORLD_SIZE": "2"}
    procs = [subprocess.Popen([sys.executable, str(script)], env={**env, "RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    results = []
    for out in outs:
        line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
        assert line, out[-3000:]
        results.append(json.loads(line.removeprefix("RESULT ")))
    assert [r["rows"] for r in results] == [3, 3]                # 6 scored positions, 3 per rank
    for r in results:
        assert r["lp"] < 1e-12 and r["grad_h"] < 1e-12 and r["grad_w"] < 1e-12, r
