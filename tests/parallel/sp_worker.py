"""One torchrun worker for the SP tests: compares sequence-parallel log-probs and gradients with the
single-process model on this rank, and writes `rank<N>.json` into `--out`.

Run by tests/parallel/test_sp_distributed.py as `torchrun --nproc_per_node=W sp_worker.py --out DIR`.
Scenarios depend on W: 2 -> SP=2 (right padding, left padding + gradient checkpointing, Qwen2-VL);
4 -> DP x SP = 2 x 2, and SP=4 with 2 KV heads (< SP, replicated). Plus, always, an impossible grid.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sp_tiny_model import make_batch, masked_nll, reference_logprobs, tiny_model  # noqa: E402

from lvr_trainer.parallel import init_process_grid, reduce_gradients, sp_forward_logprobs  # noqa: E402

# (prefix, video grid (t, h, w), suffix) per sample: uneven lengths, none a multiple of 4.
SPECS = [(6, (2, 4, 6), 11), (3, (2, 4, 4), 6), (2, (4, 4, 4), 3), (7, (2, 6, 4), 2)]


def run_scenario(sp: int, pad_side: str, checkpointing: bool, family: str = "qwen2_5_vl", per_rank: int = 2) -> dict:
    grid = init_process_grid(sp)
    model = tiny_model(seed=0, family=family)
    batch = make_batch(model, SPECS[: per_rank * grid.dp_size], pad_side=pad_side, seed=1)
    model.train()  # dropout is 0; train() turns gradient checkpointing on when enabled
    if checkpointing:
        model.activation_checkpointing_enable()
    params = dict(model.named_parameters())

    # Reference: one process, whole global batch, loss = mean over DP ranks of each rank's mean NLL.
    slices = [slice(d * per_rank, (d + 1) * per_rank) for d in range(grid.dp_size)]
    ref_lp = reference_logprobs(model, batch)
    ref_loss = sum(masked_nll(ref_lp[s], batch["valid"][s]) for s in slices) / grid.dp_size
    ref_loss.backward()
    ref_grads = {n: p.grad.clone() for n, p in params.items() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    # Sequence-parallel: this rank's DP slice, its SP shard.
    mine = slices[grid.dp_rank]
    lp = sp_forward_logprobs(model, batch["inputs_embeds"][mine], batch["position_ids"][:, mine],
                             batch["target_ids"][mine], batch["attention_mask"][mine], grid)
    valid = batch["valid"][mine]
    loss = masked_nll(lp, valid)
    loss.backward()
    reduce_gradients(model, grid)
    grad_diff = max((params[n].grad - g).abs().max().item() for n, g in ref_grads.items())
    missing = sorted(n for n, p in params.items() if (p.grad is None) != (n not in ref_grads))
    return dict(sp=sp, dp=grid.dp_size, T=int(batch["input_ids"].shape[1]), pad_side=pad_side,
                checkpointing=checkpointing,
                logprob_diff=(lp - ref_lp[mine])[valid].abs().max().item(),
                loss_diff=abs(loss.item() - masked_nll(ref_lp[mine], valid).item()),
                grad_diff=grad_diff, grad_norm=sum(g.norm() ** 2 for g in ref_grads.values()).sqrt().item(),
                missing_grads=missing)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    scenarios = {
        2: {"sp2_right_pad": (2, "right", False), "sp2_left_pad_ckpt": (2, "left", True),
            "qwen2vl_sp2": (2, "right", False, "qwen2_vl")},
        4: {"dp2_sp2": (2, "right", False), "sp4_kv_replicated": (4, "right", False)},
    }[world]
    result: dict = {}
    for name, args_ in scenarios.items():
        try:
            result[name] = run_scenario(*args_)
        except Exception:  # report, keep going: the test prints it
            result[name] = {"error": traceback.format_exc()}
    try:
        init_process_grid(world + 1)
        result["impossible_grid"] = None
    except ValueError as err:
        result["impossible_grid"] = str(err)
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
