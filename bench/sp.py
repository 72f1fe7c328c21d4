"""Sequence-parallel prefill + backward of one long video sample: SP=1 vs SP=2 (vs SP=4), CPU/gloo.

For each length T (default 8k, 16k, 32k tokens: 256 text tokens around one video of T-256 tokens,
with real 3-D mRoPE positions from `get_rope_index`) every rank runs `sp_forward_logprobs` and the
backward of the mean NLL, once, on a random-init Qwen2.5-VL language model (preset below). Per rank:
  * saved activations: bytes autograd keeps for backward (saved-tensor hooks, each storage counted
    once, parameters excluded) - the quantity Ulysses divides by SP;
  * RSS peak: VmHWM minus VmRSS just before the step (peak reset per step via /proc/self/clear_refs,
    freed memory returned to the OS by a fixed glibc mmap threshold and malloc_trim), which also
    counts transient buffers (all-to-all copies, attention workspaces, gradients);
  * time of forward + backward (the slowest rank).
Processes share the machine's cores (SP=1 gets all threads, SP=W one thread per rank), so on a small
CPU the time column shows communication overhead, not speed-up.

    .venv/bin/python bench/sp.py [--lengths 8192 16384 32768] [--sp 1 2 4]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# hidden 256, 2 layers, 8 heads of 32 (4 KV heads), SwiGLU 704, vocab 1024: wide enough for the
# per-token activations to dominate, small enough for 32k tokens x 3 SP degrees in minutes on 2 cores.
PRESET = dict(hidden=256, layers=2, heads=8, kv_heads=4, intermediate=704, vocab=1024, mrope=[4, 6, 6])
TEXT_TOKENS, VIDEO_HW = 256, (32, 32)   # a 32x32-patch grid merges 2x2 -> 256 tokens per temporal patch


def build_model():
    import torch
    import transformers

    torch.manual_seed(0)
    p = PRESET
    config = transformers.Qwen2_5_VLConfig(
        text_config=dict(vocab_size=p["vocab"], hidden_size=p["hidden"], intermediate_size=p["intermediate"],
                         num_hidden_layers=p["layers"], num_attention_heads=p["heads"],
                         num_key_value_heads=p["kv_heads"], max_position_embeddings=1 << 20,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": p["mrope"]}),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=p["hidden"],
                           window_size=56, fullatt_block_indexes=[0]),
        image_token_id=p["vocab"] - 4, video_token_id=p["vocab"] - 3, vision_start_token_id=p["vocab"] - 2,
        vision_end_token_id=p["vocab"] - 1, attn_implementation="sdpa")
    return transformers.Qwen2_5_VLForConditionalGeneration(config).float().train()


def make_sample(model, length: int):
    """One sample of `length` tokens: text, <vision_start>, video, <vision_end>, text. Same on every rank."""
    import torch

    cfg = model.config
    per_frame = VIDEO_HW[0] * VIDEO_HW[1] // 4
    frames = (length - TEXT_TOKENS) // per_frame
    video = frames * per_frame
    prefix = (length - video - 2) // 2
    suffix = length - video - 2 - prefix
    gen = torch.Generator().manual_seed(length)
    text = lambda n: torch.randint(3, cfg.image_token_id, (n,), generator=gen)  # noqa: E731
    ids = torch.cat([text(prefix), torch.tensor([cfg.vision_start_token_id]),
                     torch.full((video,), cfg.video_token_id), torch.tensor([cfg.vision_end_token_id]),
                     text(suffix)]).unsqueeze(0)                                          # (1, T)
    grid = torch.tensor([[frames, *VIDEO_HW]])
    positions, _ = model.model.get_rope_index(ids, mm_token_type_ids=(ids == cfg.video_token_id).long() * 2,
                                              video_grid_thw=grid)                        # (3, 1, T)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
    embeds[ids == cfg.video_token_id] = torch.randn(video, embeds.shape[-1], generator=gen)  # "cached" video
    targets = torch.cat([ids[:, 1:], torch.zeros(1, 1, dtype=torch.long)], dim=1)
    return embeds, positions, targets


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class SavedBytes:
    """Counts bytes autograd saves for backward (each storage once, parameters excluded)."""

    def __init__(self, model):
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: set[int] = set()
        self.bytes = 0

    def pack(self, t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.params and ptr not in self.seen:
            self.seen.add(ptr)
            self.bytes += storage.nbytes()
        return t


def run_step(model, grid, length: int) -> dict:
    import torch
    import torch.distributed as dist

    from lvr_trainer.parallel import sp_forward_logprobs

    embeds, positions, targets = make_sample(model, length)
    model.zero_grad(set_to_none=True)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # reset the RSS high-water mark
    base = _status_kib("VmRSS")
    counter = SavedBytes(model)
    dist.barrier()
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
        logprobs = sp_forward_logprobs(model, embeds, positions, targets, None, grid)   # (1, T)
    loss = -logprobs[:, :-1].mean()
    loss.backward()
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM") - base
    return dict(seconds=seconds, saved_bytes=counter.bytes, rss_peak_bytes=peak * 1024, loss=loss.item())


def worker(out: Path, lengths: list[int]) -> None:
    import torch
    import torch.distributed as dist

    from lvr_trainer.parallel import init_process_grid

    world = int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    grid = init_process_grid(world)
    model = build_model()
    rows = []
    for length in lengths:
        mine = run_step(model, grid, length)
        everyone = [None] * world
        dist.all_gather_object(everyone, mine)
        rows.append(dict(length=length, sp=world, seconds=max(r["seconds"] for r in everyone),
                         saved_bytes=max(r["saved_bytes"] for r in everyone),
                         rss_peak_bytes=max(r["rss_peak_bytes"] for r in everyone), loss=mine["loss"]))
        if grid.rank == 0:
            print(json.dumps(rows[-1]), flush=True)
    if grid.rank == 0:
        out.write_text(json.dumps(rows))
    dist.destroy_process_group()


def launch(sp: int, lengths: list[int], out: Path) -> list[dict]:
    # glibc would keep freed activations mapped (its mmap threshold grows after frees), hiding later
    # peaks from RSS: a fixed threshold returns every large block to the OS when it is freed.
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // sp)),
           "MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "1048576"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent / "trainer") + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={sp}", __file__,
           "--worker", "--out", str(out), "--lengths", *map(str, lengths)]
    subprocess.run(cmd, env=env, check=True)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384, 32768])
    parser.add_argument("--sp", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.out, args.lengths)

    from lvr_trainer.utils.table import format_table

    results: dict[tuple[int, int], dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for sp in args.sp:
            for row in launch(sp, args.lengths, Path(tmp) / f"sp{sp}.json"):
                results[(row["length"], sp)] = row
    mib = 1 << 20
    rows = []
    for (length, sp), r in sorted(results.items()):
        base = results.get((length, 1))
        rows.append([length, sp, r["saved_bytes"] / mib,
                     r["saved_bytes"] / base["saved_bytes"] if base else float("nan"),
                     r["rss_peak_bytes"] / mib,
                     r["rss_peak_bytes"] / base["rss_peak_bytes"] if base else float("nan"),
                     r["seconds"], abs(r["loss"] - base["loss"]) if base else float("nan")])
    print(f"\npreset {PRESET}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{platform.python_version()}")
    print(format_table(["tokens", "SP", "saved act. MiB/rank", "x SP=1", "RSS peak MiB/rank", "x SP=1",
                        "fwd+bwd s", "|loss - SP=1|"], rows))


if __name__ == "__main__":
    main()
