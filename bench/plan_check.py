"""The memory plan against measurement, on any machine: the trainer's own SFT or RL step (forward, backward
with per-layer checkpointing, the optimizer step) at small shapes on the CPU, its peak from the CPU allocator's
running total as torch's profiler records it (the counterpart of the CUDA allocator's statistics),
next to `lvr_trainer.plan`'s figure for the same step, model, workload and layout (fp32 compute, SDPA's CPU
kernels, no runtime share: nothing of a GPU's context is measured here).

Steps (each measured after one warm-up step, so AdamW's moments exist as in every later step):
- sft: `train.sft.sft_step` on one sequence [prompt | reply] and `train.optim.finish_step`;
- rl: `train.rl_update.ppo_update` on the packed row [prompt | G replies] (grouped attention, the GRPO loss,
  `finish_step`).
Each step is measured `--repeats` times; the table shows the median peak and the range. Under torchrun with N
processes the step runs with sequence parallelism N (Ulysses over gloo), every rank measuring its own peaks; the
table shows the largest rank's. Under SP the peak varies from step to step (by up to a fifth on 2 cores): gloo's
worker threads drop their references to the all-to-all buffers a moment after the collective completes, and
the step may allocate its next tensors before or after they do.

    python bench/plan_check.py --stage rl --tokens 2048 8192
    torchrun --nproc_per_node 2 bench/plan_check.py --stage sft --tokens 2048 8192
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import make_examples, trainer_config, workload  # noqa: E402


def build(preset: str):
    """The preset's model as the trainer trains it: float32, frozen vision tower, per-layer checkpointing."""
    from lvr_trainer.config import ModelConfig
    from lvr_trainer.model.loading import load_model, vision_tower

    model, _ = load_model(ModelConfig(preset=preset, tokenizer="tiny", dtype="float32"))
    vision_tower(model).requires_grad_(False)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def step_function(stage: str, model, cfg, grid, tokens: int, group: int, reply: int):
    """The trainer's step for one micro-batch of this workload, as a callable."""
    from lvr_trainer.train.optim import build_optimizer, finish_step

    optimizer, scheduler = build_optimizer(model, cfg.optim, 1000)
    finish = lambda: finish_step(model, optimizer, scheduler, grid, cfg)  # noqa: E731
    examples, rollouts, advantages = make_examples(model, tokens, group, reply)
    device = torch.device("cpu")
    if stage == "sft":
        from lvr_trainer.train.sft import ExampleBank, sft_step

        bank = ExampleBank(model, SimpleNamespace(pad_token_id=0), [], None, True, built={0: examples[0]})
        return (lambda: (sft_step(model, bank, [[0]], grid, cfg, device), finish())), optimizer
    from contextlib import nullcontext

    from lvr_trainer.train.rl_rollout import micro_batches
    from lvr_trainer.train.rl_update import ppo_update

    micros = micro_batches(examples, rollouts, advantages, group, 0, device, group_size=group)
    for mb in micros:           # the ratios start at 1, as after the trainer's old-log-prob prefill
        mb.old_logprobs = torch.zeros(mb.mask.shape)
    return (lambda: ppo_update(model, micros, cfg.rl, grid, finish, nullcontext, device)), optimizer


def state_bytes_now(model, optimizer) -> int:
    """Bytes of what lives before a step begins: parameters, buffers and the optimizer's state tensors."""
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def measured_peak(model, optimizer, fn) -> int:
    """The most bytes of live tensors at any moment of `fn()`: what lived before it began, plus the highest
    running total of the CPU allocator during it. The allocator keeps that total itself, under its lock, and
    the profiler records it with every allocation and free (`Total Allocated` of its memory events): the
    counterpart of `torch.cuda.max_memory_allocated`, exact whatever the threads (gloo's included) do. The
    events of several threads are not in time order in the trace; the total as `fn` began is the lowest the
    running total was before any of them."""
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    before = state_bytes_now(model, optimizer)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.NamedTemporaryFile(suffix=".json") as trace:
        prof.export_chrome_trace(trace.name)
        events = json.loads(Path(trace.name).read_text())["traceEvents"]
    memory = [e["args"] for e in events if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0]
    if not memory:
        return before
    start = min(m["Total Allocated"] - m["Bytes"] for m in memory)
    return before + max(m["Total Allocated"] for m in memory) - start


def planned(model, stage: str, tokens: int, group: int, reply: int, sp: int) -> tuple[int, dict[str, int]]:
    """The plan's bytes per rank for this step (runtime excluded) and its parts."""
    from lvr_trainer.plan import Layout, components, shape_from_config

    shape = shape_from_config(model.config.to_dict())
    layout = Layout(gpus=sp, sequence_parallel=sp, sharded=False, checkpointing=True, reference=False,
                    rollout="none", compute_bytes=4, fused_attention=False)
    parts = {c.name: c.bytes for c in components(shape, workload(tokens, group if stage == "rl" else 1, reply),
                                                 layout, 80 * 2**30) if c.name != "runtime"}
    return sum(parts.values()), parts


def main(argv=None) -> int:
    from lvr_trainer.parallel.world import leave_world, setup_grid

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=["sft", "rl"], default="rl")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--tokens", type=int, nargs="+", default=[2048, 8192], help="video tokens of the prompt")
    p.add_argument("--group", type=int, default=4, help="G replies per prompt (rl)")
    p.add_argument("--reply-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5,
                   help="steps measured: their median peak and range are shown (under SP the peak varies from "
                        "step to step with the moment gloo's worker threads release the all-to-all buffers)")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    sp = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = trainer_config("fp32", args.group if args.stage == "rl" else None, sp)
    grid = setup_grid(cfg.parallel)
    rows = []
    for tokens in args.tokens:
        model = build(args.preset)
        torch.manual_seed(0)
        step, optimizer = step_function(args.stage, model, cfg, grid, tokens, args.group, args.reply_tokens)
        step()                                   # warm-up: AdamW's moments now exist
        peaks = []
        for _ in range(args.repeats):
            optimizer.zero_grad(set_to_none=True)
            peaks.append(measured_peak(model, optimizer, step))
        # per rank: the median step and the extremes; across ranks: the largest of each
        stats = torch.tensor([statistics.median(peaks), max(peaks), -min(peaks)], dtype=torch.float64)
        if dist.is_initialized():
            dist.all_reduce(stats, op=dist.ReduceOp.MAX)
        median, largest, smallest = stats[0].item(), stats[1].item(), -stats[2].item()
        plan, parts = planned(model, args.stage, tokens, args.group, args.reply_tokens, sp)
        rows.append({"stage": args.stage, "sp": sp, "preset": args.preset, "video_tokens": tokens,
                     "measured_bytes": int(median), "measured_range": [int(smallest), int(largest)],
                     "plan_bytes": plan, "plan_parts": parts, "ratio": plan / median,
                     "ratio_to_largest": plan / largest})
    if grid.rank == 0:
        print("| stage | SP | preset | video tokens | measured MiB (median) | range | plan MiB | plan / median "
              "| plan / largest |\n|---|---:|---|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            low, high = (b / 2**20 for b in r["measured_range"])
            print(f"| {r['stage']} | {r['sp']} | {r['preset']} | {r['video_tokens']} | "
                  f"{r['measured_bytes'] / 2**20:.1f} | {low:.1f} - {high:.1f} | {r['plan_bytes'] / 2**20:.1f} | "
                  f"{r['ratio']:.2f} | {r['ratio_to_largest']:.2f} |")
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    leave_world()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
