"""What an 8-GPU node meets first, measured on one lent GPU: a random-init model with Qwen2.5-VL-7B's
language-model shapes (no weights needed), one process, at 16k / 32k / 64k prompt tokens (the video).

Phases, each timed and its peak GPU memory recorded:
- prefill: a no-grad forward of the prompt (the old / reference log-prob prefill);
- rollout: the prompt prefilled once, its KV cache expanded to G replies, `--reply-tokens` decoded greedily
  (a shared-prefix rollout: what the engine does per GRPO group);
- update: forward + backward with the loss on the last `--reply-tokens` positions (the LM head runs only
  there), with and without gradient checkpointing.
MFU = model FLOPs (2 x params x tokens forward, x3 with backward, x4 with checkpointing, plus causal
attention) / (seconds x the device's peak bf16 FLOP/s). An out-of-memory cell says OOM and the run goes on.

    python bench/gpu_check.py                       # on the GPU: the table for BENCHMARKS.md (< 8 min)
    python bench/gpu_check.py --shape tiny --tokens 256 512 --device cpu   # a smoke run anywhere
"""

from __future__ import annotations

import argparse
import time

import torch

SHAPES = {  # text model sizes; the vision tower is a stub (the prompt arrives as cached embeddings)
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, mrope_section=[16, 24, 24]),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024, mrope_section=[4, 6, 6]),
}
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}   # dense bf16, per the vendors' data sheets


def build(shape: str, attn: str, device: torch.device, dtype: torch.dtype):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    s = dict(SHAPES[shape])
    section = s.pop("mrope_section")
    text = dict(**s, max_position_embeddings=131072, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                                      "mrope_section": section})
    vision = dict(depth=1, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=s["hidden_size"])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision)
    config._attn_implementation = attn
    with device:
        model = Qwen2_5_VLForConditionalGeneration(config).to(dtype)
    return model


def lm_parts(model):
    return model.model.language_model, model.lm_head


def positions(tokens: int, device) -> torch.Tensor:
    return torch.arange(tokens, device=device).view(1, 1, -1).expand(3, 1, -1)       # (3, B, T) text mRoPE


def flops(params: int, layers: int, hidden: int, tokens: int, backward: bool, recompute: bool) -> float:
    forward = 2 * params * tokens + 2 * layers * tokens * tokens * hidden      # matmuls + causal attention
    return forward * (1 + (2 if backward else 0) + (1 if recompute else 0))


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


def prefill(model, embeds, device):
    lm, _ = lm_parts(model)
    with torch.no_grad():
        lm(inputs_embeds=embeds, position_ids=positions(embeds.shape[1], device), use_cache=False)


def rollout(model, embeds, device, replies: int, new_tokens: int):
    lm, head = lm_parts(model)
    with torch.no_grad():
        out = lm(inputs_embeds=embeds, position_ids=positions(embeds.shape[1], device), use_cache=True)
        cache = out.past_key_values
        cache.batch_repeat_interleave(replies)
        token = head(out.last_hidden_state[:, -1:]).argmax(-1).expand(replies, 1)
        start = embeds.shape[1]
        for i in range(new_tokens):
            pos = torch.full((3, replies, 1), start + i, device=device)
            step = lm(input_ids=token, position_ids=pos, past_key_values=cache, use_cache=True)
            token = head(step.last_hidden_state).argmax(-1)


def update(model, embeds, device, target_tokens: int):
    lm, head = lm_parts(model)
    hidden = lm(inputs_embeds=embeds, position_ids=positions(embeds.shape[1], device), use_cache=False)
    logits = head(hidden.last_hidden_state[:, -target_tokens:]).float()
    targets = torch.randint(0, logits.shape[-1], logits.shape[:-1], device=device)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
    model.zero_grad(set_to_none=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    p.add_argument("--tokens", type=int, nargs="+", default=[16384, 32768, 65536])
    p.add_argument("--attn", nargs="+", default=["sdpa", "flash_attention_2"])
    p.add_argument("--replies", type=int, default=8, help="G, rollout replies per prompt")
    p.add_argument("--reply-tokens", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--peak-tflops", type=float, default=None, help="default: from the device name")
    p.add_argument("--time-limit", type=float, default=420.0, help="seconds; later cells are skipped")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    attns = [a for a in args.attn if a != "flash_attention_2" or _has_flash_attn()]
    t_start = time.perf_counter()
    print(f"{name}; shape {args.shape}; G={args.replies}, {args.reply_tokens} reply tokens; dtype {dtype}")
    print("| attn | tokens | phase | s | tokens/s | peak GiB | MFU |\n|---|---:|---|---:|---:|---:|---:|")
    for attn in attns:
        model = build(args.shape, attn, device, dtype)
        params = sum(p.numel() for p in lm_parts(model)[0].parameters())
        cfg = model.config.text_config
        for tokens in args.tokens:
            embeds = torch.randn(1, tokens, cfg.hidden_size, device=device, dtype=dtype)
            cells = [("prefill", lambda: prefill(model, embeds, device), False, False, tokens),
                     ("rollout", lambda: rollout(model, embeds, device, args.replies, args.reply_tokens), False,
                      False, args.replies * args.reply_tokens),
                     ("update", lambda: update(model, embeds, device, args.reply_tokens), True, False, tokens),
                     ("update+ckpt", lambda: update(model, embeds, device, args.reply_tokens), True, True, tokens)]
            for phase, fn, backward, recompute, counted in cells:
                if time.perf_counter() - t_start > args.time_limit:
                    print(f"| {attn} | {tokens} | {phase} | skipped (time limit) | | | |")
                    continue
                _set_checkpointing(model, recompute)
                try:
                    _, seconds, gib = timed(device, fn)
                except torch.OutOfMemoryError:
                    print(f"| {attn} | {tokens} | {phase} | OOM | | | |")
                    torch.cuda.empty_cache()
                    continue
                work = flops(params, cfg.num_hidden_layers, cfg.hidden_size, tokens, backward, recompute)
                mfu = f"{work / seconds / (peak * 1e12):.1%}" if peak and phase != "rollout" else "-"
                print(f"| {attn} | {tokens} | {phase} | {seconds:.2f} | {counted / seconds:,.0f} | {gib:.1f} | {mfu} |",
                      flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"total {time.perf_counter() - t_start:.0f} s")
    return 0


def _set_checkpointing(model, on: bool) -> None:
    if on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    else:
        model.gradient_checkpointing_disable()


def _has_flash_attn() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


if __name__ == "__main__":
    raise SystemExit(main())
