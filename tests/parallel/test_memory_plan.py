"""The memory of the paper's layout, from the real parallel plan: Qwen2.5-VL-7B's shapes on the meta device,
sharded by `parallel.fsdp` in an 8-rank world (a fake process group: shapes only, no data, no collectives),
per-rank bytes of weights, gradients, AdamW state and the reference equal the arithmetic of
`lvr_trainer.plan`, and with checkpointed activations of 256k tokens over SP 4 the sum fits an 80 GB GPU."""

from __future__ import annotations

import json
import subprocess
import sys

from lvr_trainer.plan import GIB, ModelCounts, checkpointed_activation_bytes, state_bytes


def test_qwen25_vl_7b_on_8_gpus_fits_80gb_by_the_real_sharded_plan():
    res = subprocess.run([sys.executable, "-m", "lvr_trainer.parallel.memory", "8", "4", "3"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    real = json.loads(res.stdout.strip().splitlines()[-1])
    assert real["sharded"]                                   # embeddings, norm and head too, not just layers
    assert 7.5e9 < real["language"] < 7.7e9 and 6.5e8 < real["vision"] < 7e8       # the 7B model's counts
    counts = ModelCounts(real["language"], real["vision"])
    plan = state_bytes(counts, world=8, sharded=True)
    for component in ("weights", "gradients", "optimizer", "reference"):
        assert abs(real[component] - getattr(plan, component)) <= 0.01 * getattr(plan, component), component
    activations = checkpointed_activation_bytes(256 * 1024 // 4, 3584, 18944, 28)   # 256k tokens over SP 4
    assert plan.total < 20 * GIB                             # about 18.5 GiB of state per GPU
    assert plan.total + activations < 80e9 * 0.75            # a quarter of the GPU left for workspace and rollout
    # the layout this replaces (every rank holding the whole model) cannot hold even its state
    assert state_bytes(counts, world=8, sharded=False).total > 80e9
