"""Sequence parallelism against the single-process model, with real gloo processes under torchrun.

Each run spawns `torchrun --nproc_per_node=W tests/parallel/sp_worker.py`; every rank compares its
SP log-probs (fp32, max abs diff <= 1e-5) and its reduced gradients (<= 1e-4) with the plain model on
a padded batch of uneven lengths with a real video-token layout (3-D mRoPE positions).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
REPO = HERE.parent.parent

pytestmark = [pytest.mark.distributed]


def _torchrun(world: int, out: Path) -> dict[int, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "trainer")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
           str(HERE / "sp_worker.py"), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return {r: json.loads((out / f"rank{r}.json").read_text()) for r in range(world)}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return _torchrun(2, tmp_path_factory.mktemp("sp2"))


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory):
    return _torchrun(4, tmp_path_factory.mktemp("sp4"))


def _check(results: dict[int, dict], scenario: str, sp: int, dp: int) -> None:
    for rank, result in results.items():
        r = result[scenario]
        assert "error" not in r, f"rank {rank} {scenario}:\n{r.get('error')}"
        assert (r["sp"], r["dp"]) == (sp, dp)
        assert r["T"] % sp != 0, "the batch should need SP padding (uneven length)"
        assert r["logprob_diff"] <= 1e-5, (rank, scenario, r)
        assert r["loss_diff"] <= 1e-5, (rank, scenario, r)
        assert r["grad_diff"] <= 1e-4, (rank, scenario, r)
        assert r["grad_norm"] > 0 and not r["missing_grads"], (rank, scenario, r)


def test_sp2_right_padded_uneven_batch(two_ranks):
    _check(two_ranks, "sp2_right_pad", sp=2, dp=1)


def test_sp2_left_padded_with_gradient_checkpointing(two_ranks):
    _check(two_ranks, "sp2_left_pad_ckpt", sp=2, dp=1)


def test_sp2_qwen2_vl(two_ranks):
    _check(two_ranks, "qwen2vl_sp2", sp=2, dp=1)


def test_dp2_x_sp2(four_ranks):
    _check(four_ranks, "dp2_sp2", sp=2, dp=2)


def test_sp4_replicates_kv_heads(four_ranks):
    # tiny model: 4 query heads, 2 KV heads < SP=4 -> each KV head replicated twice
    _check(four_ranks, "sp4_kv_replicated", sp=4, dp=1)


@pytest.mark.parametrize("world", [2, 4])
def test_impossible_grid_is_refused_on_every_rank(world, two_ranks, four_ranks):
    results = two_ranks if world == 2 else four_ranks
    for result in results.values():
        msg = result["impossible_grid"]
        assert msg and f"sequence_parallel={world + 1} does not divide the world size {world}" in msg
