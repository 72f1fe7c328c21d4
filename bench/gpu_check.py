"""What one GPU of an 8-GPU node meets, measured with the trainer's own code: the packed shared-prefix RL step
(one prompt of T video tokens and its G replies in one row, grouped attention from the segment layout) on a
model with Qwen2.5-VL-7B's widths and a few layers, at 16k / 32k / 64k / 128k prompt tokens, with `lvr plan`'s
figure for the same step beside the measured peak.

Phases (each timed, its peak GPU memory recorded from a reset of the allocator's statistics):
- old_logprobs: `train.rl_update.prefill_logprobs` (no grad), the micro-batch `train.rl_rollout.micro_batches`
  packs from the G replies (`rl.shared_prefix`);
- update: `train.rl_update.ppo_update` (forward + backward with activation checkpointing, GRPO loss, the
  trainer's `finish_step`: gradient clipping and a fused AdamW step).
The weights are the model's own random init in float32 with bf16 autocast (the trainer's `bf16-mixed` under
DDP on one GPU). MFU counts useful model FLOPs only (2 x params x tokens forward, x3 with the backward, causal
attention over each segment; the checkpointing recompute is not useful work) against the device's dense bf16
peak. `plan` is `lvr_trainer.plan` for this model, workload and one unsharded GPU: weights, gradients, AdamW,
activations, attention, LM head (no runtime share). An out-of-memory cell says OOM and the run goes on.

    python bench/gpu_check.py                      # on a GPU: the table for BENCHMARKS.md (< 8 min on an H100)
    python bench/gpu_check.py --shape tiny --tokens 512 1024 --device cpu   # the same code, anywhere
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

CONFIG_7B = Path(__file__).resolve().parents[1] / "examples" / "plan" / "qwen2.5-vl-7b" / "config.json"
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}   # dense bf16, per the vendors' data sheets
PATCH_SIDE = 28                                                # merged 2x2 patches per side of a frame pair


def build(shape: str, layers: int, attn: str, device: torch.device):
    """Qwen2.5-VL with the 7B's widths, vocabulary and rope, `layers` decoder layers and a 1-block vision
    tower (never run: the prompt arrives as cached embeddings); or the tiny preset."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    if shape == "tiny":
        from lvr_trainer.config import ModelConfig
        from lvr_trainer.model.loading import load_model

        model, _ = load_model(ModelConfig(preset="tiny", tokenizer="tiny", dtype="float32"))
        return model.to(device)
    config = AutoConfig.from_pretrained(str(CONFIG_7B.parent))
    text = getattr(config, "text_config", config)
    text.num_hidden_layers = layers
    config.vision_config.depth = 1
    config._attn_implementation = attn
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32, attn_implementation=attn)
    return model


def video_grid(tokens: int) -> tuple[int, int]:
    """(frame pairs, merged patches per side) of a video of about `tokens` tokens."""
    side = PATCH_SIDE if tokens >= PATCH_SIDE ** 2 else 4
    return max(1, round(tokens / side ** 2)), side


def workload(tokens: int, group: int, reply_tokens: int):
    """The plan's `Workload` of the prompt `make_examples` builds: the same video and text tokens."""
    from lvr_trainer.plan import Workload

    pairs, side = video_grid(tokens)
    return Workload(frames=2 * pairs, max_pixels=(side * 28) ** 2, group_size=group, reply_tokens=reply_tokens,
                    shared_prefix=group > 1)


def make_examples(model, tokens: int, group: int, reply_tokens: int):
    """One prompt of about `tokens` video tokens and the plan's text allowance around them, and `group` random
    replies: (examples, rollouts, advantages) as the trainer builds them before packing."""
    from lvr_trainer.inputs.examples import IGNORE, Example
    from lvr_trainer.inputs.features import VideoFeatures
    from lvr_trainer.model.prompt import VIDEO, rope_positions
    from lvr_trainer.plan import PROMPT_TEXT_TOKENS
    from lvr_trainer.rollout.base import Rollout

    cfg = model.config
    text_cfg = getattr(cfg, "text_config", cfg)
    merge = cfg.vision_config.spatial_merge_size
    t, side = video_grid(tokens)
    grid = torch.tensor([[t, side * merge, side * merge]])
    video = t * side * side
    g = torch.Generator().manual_seed(0)
    special = {cfg.vision_start_token_id, cfg.vision_end_token_id, cfg.video_token_id, cfg.image_token_id}
    ordinary = torch.tensor([i for i in range(10, min(1000, text_cfg.vocab_size)) if i not in special])

    def text_ids(n: int) -> torch.Tensor:
        return ordinary[torch.randint(0, len(ordinary), (n,), generator=g)]
    prompt = torch.cat([text_ids(8), torch.tensor([cfg.vision_start_token_id]),
                        torch.full((video,), cfg.video_token_id), torch.tensor([cfg.vision_end_token_id]),
                        text_ids(PROMPT_TEXT_TOKENS - 10)])
    mm_prompt = torch.zeros_like(prompt)
    mm_prompt[9:9 + video] = VIDEO
    features = VideoFeatures(torch.randn(video, text_cfg.hidden_size, generator=g) * 0.02, grid, 1.0)
    examples, rollouts = [], []
    for _ in range(group):
        reply = text_ids(reply_tokens)
        ids = torch.cat([prompt, reply])
        mm = torch.cat([mm_prompt, torch.zeros_like(reply)])
        positions, _ = rope_positions(model, ids[None], mm[None], grid, torch.tensor([1.0]))
        examples.append(Example(ids, torch.cat([torch.full_like(prompt, IGNORE), reply]), mm, positions[:, 0],
                                features, len(prompt)))
        rollouts.append(Rollout(reply.tolist(), [0.0] * reply_tokens, "", True))
    return examples, rollouts, torch.randn(group, generator=g)


def make_micro(model, tokens: int, group: int, reply_tokens: int, device):
    """The examples of `make_examples` packed by the trainer (`micro_batches` with group_size: one row
    [prompt | G replies]); and the prompt's length."""
    from lvr_trainer.train.rl_rollout import micro_batches

    examples, rollouts, advantages = make_examples(model, tokens, group, reply_tokens)
    return micro_batches(examples, rollouts, advantages, group, 0, device, group_size=group), examples[0].prompt_len


def timed(device, fn):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return out, time.perf_counter() - t0, peak


def useful_flops(params: int, layers: int, hidden: int, prompt: int, group: int, reply: int, backward: bool) -> float:
    """Matmuls over every token, causal attention over the prompt and each reply over [prompt ; itself]."""
    tokens = prompt + group * reply
    attention = 2 * layers * hidden * (prompt * prompt + group * (2 * prompt * reply + reply * reply))
    return (2 * params * tokens + attention) * (3 if backward else 1)


def plan_gib(model, tokens: int, group: int, reply: int) -> float:
    """`lvr plan`'s bytes for this step on one unsharded GPU, without the runtime share, in GiB."""
    from lvr_trainer.plan import Layout, components, shape_from_config

    shape = shape_from_config(model.config.to_dict())
    layout = Layout(gpus=1, sharded=False, checkpointing=True, reference=False, rollout="none")
    parts = components(shape, workload(tokens, group, reply), layout, 80 * 2**30)
    return sum(c.bytes for c in parts if c.name != "runtime") / 2**30


def trainer_config(precision: str, group: int | None, sp: int = 1):
    """The tiny preset's trainer config for running the trainer's step on a hand-made batch (nothing is read
    or saved): an `rl` section of `group` replies without a KL term, none when `group` is None (SFT)."""
    from lvr_trainer.config import TrainerConfig

    rl = {"rl": {"group_size": group, "kl_coef": 0.0}} if group is not None else {}
    return TrainerConfig.model_validate({
        "model": {"preset": "tiny"}, "data": {"train": "unused.jsonl"}, "output": {"dir": "/tmp/lvr-step-check"},
        "train": {"precision": precision, "gradient_checkpointing": True, "batch_size": 1},
        "optim": {"lr": 1e-6}, "parallel": {"strategy": "ddp", "sequence_parallel": sp}, **rl})


def main(argv=None) -> int:
    from lvr_trainer.parallel.grid import single_process_grid
    from lvr_trainer.train.optim import build_optimizer, finish_step
    from lvr_trainer.train.rl_update import ppo_update, prefill_logprobs

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=["7b", "tiny"], default="7b")
    p.add_argument("--layers", type=int, default=4, help="decoder layers of the 7B-wide model (default 4)")
    p.add_argument("--tokens", type=int, nargs="+", default=[16384, 32768, 65536, 131072])
    p.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, flash_attention_2)")
    p.add_argument("--group", type=int, default=8, help="G replies per prompt")
    p.add_argument("--reply-tokens", type=int, default=512)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--peak-tflops", type=float, default=None, help="default: from the device name")
    p.add_argument("--time-limit", type=float, default=420.0, help="seconds; later cells are skipped")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    cfg = trainer_config("bf16-mixed" if device.type == "cuda" else "fp32", 8)
    grid = single_process_grid(device.type)
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")  # noqa: E731
    model = build(args.shape, args.layers, args.attn, device)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    text_cfg = getattr(model.config, "text_config", model.config)
    params = sum(p.numel() for n, p in model.named_parameters() if "visual" not in n)
    optimizer, scheduler = build_optimizer(model, cfg.optim, 1000)
    finish = lambda: finish_step(model, optimizer, scheduler, grid, cfg)  # noqa: E731
    rows, t_start = [], time.perf_counter()
    print(f"{name}; {args.shape}, {text_cfg.num_hidden_layers} layers, {params / 1e9:.2f}B language params; "
          f"G={args.group} x {args.reply_tokens} reply tokens; attn {args.attn}; "
          + ("bf16 autocast over fp32 weights" if device.type == "cuda" else "fp32"))
    print("| prompt tokens | phase | s | tokens/s | peak GiB | plan GiB | MFU |\n|---:|---|---:|---:|---:|---:|---:|")
    for tokens in args.tokens:
        micros, prompt = make_micro(model, tokens, args.group, args.reply_tokens, device)
        total = prompt + args.group * args.reply_tokens
        planned = plan_gib(model, tokens, args.group, args.reply_tokens)
        for phase in ("old_logprobs", "update"):
            if time.perf_counter() - t_start > args.time_limit:
                print(f"| {prompt} | {phase} | skipped (time limit) | | | | |")
                continue
            fn = ((lambda: prefill_logprobs(model, micros, grid, 1.0, "old_logprobs", autocast))
                  if phase == "old_logprobs" else
                  (lambda: ppo_update(model, micros, cfg.rl, grid, finish, autocast, device)))
            try:
                _, seconds, gib = timed(device, fn)
            except torch.OutOfMemoryError:
                print(f"| {prompt} | {phase} | OOM | | | {planned:.1f} | |", flush=True)
                optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                continue
            work = useful_flops(params, text_cfg.num_hidden_layers, text_cfg.hidden_size, prompt, args.group,
                                args.reply_tokens, phase == "update")
            mfu = f"{work / seconds / (peak * 1e12):.1%}" if peak else "-"
            rows.append({"prompt_tokens": prompt, "phase": phase, "seconds": seconds, "peak_gib": gib,
                         "plan_gib": planned, "mfu": mfu})
            print(f"| {prompt} | {phase} | {seconds:.2f} | {total / seconds:,.0f} | {gib:.1f} | "
                  f"{planned:.1f} | {mfu} |", flush=True)
        del micros
    print(f"total {time.perf_counter() - t_start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
