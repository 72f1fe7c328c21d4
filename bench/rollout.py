"""Benchmark: rollout throughput of each engine, in process and behind `lvr rollout-server`, and weight sync.

P prompts x G replies from cached video embeddings (random, of the shape F frames give: F/2 temporal
patches x tokens per frame), the same weights everywhere (the in-process model's, pushed to every
other engine first). Engines:
  hf-generate           the baseline: transformers' own `generate(num_return_sequences=G, output_logits=True)`
                        from the same cached embeddings (G prefills per prompt, every step's logits kept),
                        what TransformersEngine did before the shared-prefix sampler
  transformers          TransformersEngine in this process (one prefill per prompt, rollout/shared_prefix.py)
  transformers+server   the same behind `lvr rollout-server` (HTTP + safetensors: the sidecar's overhead)
  vllm                  VllmEngine in this process
  vllm+server           vLLM behind `lvr rollout-server --engine vllm` (the vLLM sidecar)
Each engine warms up once per shape, then the best of --reps timed calls counts. Weight sync: seconds to
load the whole model into each engine (an HTTP push for servers), scaled to seconds per 100 MB.
The vLLM rows need vLLM (run with .venv-vllm/bin/python after `make vllm-venv`; skipped otherwise).

    .venv-vllm/bin/python bench/rollout.py [--preset small] [--frames 64 256] [--prompts 4] [--group 8]
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from lvr_trainer.config import ModelConfig
from lvr_trainer.model.loading import load_model
from lvr_trainer.model.tokenizer import vision_token_ids
from lvr_trainer.rollout.base import RolloutRequest, SamplingParams
from lvr_trainer.rollout.hf import TransformersEngine
from lvr_trainer.rollout.client import RemoteRolloutEngine
from lvr_trainer.rollout.weights import policy_tensors
from lvr_trainer.utils.table import format_table

TOKENS_PER_PATCH = 16      # a 112x112 frame pair after the 2x2 merge: 4 x 4 video tokens


def synthetic_request(tok, hidden: int, frames: int, seed: int) -> RolloutRequest:
    """A prompt `<vision_start> video x N <vision_end> question` with random cached embeddings (N, hidden)."""
    ids = vision_token_ids(tok)
    t = max(frames // 2, 1)
    n = t * TOKENS_PER_PATCH
    g = torch.Generator().manual_seed(seed)
    question = torch.randint(100, 200, (24,), generator=g)
    input_ids = torch.cat([torch.tensor([ids.vision_start]), torch.full((n,), ids.video),
                           torch.tensor([ids.vision_end]), question])
    mm = torch.zeros_like(input_ids)
    mm[1:1 + n] = 2
    return RolloutRequest(input_ids, mm, torch.randn(n, hidden, generator=g) * 0.02,
                          torch.tensor([[t, 8, 8]]), second_per_grid_t=1.0)


class GenerateBaseline:
    """`model.generate` with num_return_sequences: each prompt's inputs repeated G times before the prefill,
    log-probs from the stacked per-step logits (as TransformersEngine computed them before)."""

    def __init__(self, model, tok, suppress):
        self.model, self.tok, self.suppress = model, tok, suppress

    @torch.no_grad()
    def generate(self, requests, params):
        from lvr_trainer.model.encode import cached_video_kwargs
        from lvr_trainer.rollout.base import Rollout
        from lvr_trainer.rollout.hf import left_pad

        tok = self.tok
        ids = left_pad([r.input_ids for r in requests], tok.pad_token_id)
        mask = left_pad([torch.ones_like(r.input_ids) for r in requests], 0)
        mm = left_pad([r.mm_token_type_ids for r in requests], 0)
        grid = torch.cat([r.video_grid_thw for r in requests])
        embeds = torch.cat([r.video_embeds for r in requests])
        torch.manual_seed(params.seed)
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, mm_token_type_ids=mm, video_grid_thw=grid,
            second_per_grid_ts=torch.tensor([r.second_per_grid_t for r in requests]),
            **cached_video_kwargs(embeds, grid), do_sample=True, temperature=params.temperature, top_p=1.0, top_k=0,
            num_return_sequences=params.n, max_new_tokens=params.max_new_tokens, suppress_tokens=self.suppress,
            output_logits=True, return_dict_in_generate=True, pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id)
        new = out.sequences[:, ids.shape[1]:]
        lps = (torch.stack(out.logits, 1).float() / params.temperature).log_softmax(-1).gather(
            -1, new[..., None])[..., 0]
        return [[Rollout(new[i * params.n + j].tolist(), lps[i * params.n + j].tolist(), "", False)
                 for j in range(params.n)] for i in range(len(requests))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(engine: str, model_cfg: dict, workdir: Path, max_model_len: int) -> tuple[subprocess.Popen, str]:
    config = workdir / f"{engine}.yaml"
    config.write_text(yaml.safe_dump({"model": model_cfg, "data": {"train": "unused.jsonl"},
                                      "output": {"dir": str(workdir)},
                                      "rollout": {"engine": engine, "max_model_len": max_model_len}}))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lvr_trainer.cli", "rollout-server", "--config", str(config),
                             "--port", str(port), "--batch-size", "64"], stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    RemoteRolloutEngine(url).wait_ready(600)
    return proc, url


def timed(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--frames", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    has_vllm = importlib.util.find_spec("vllm") is not None
    model_cfg = {"preset": args.preset, "tokenizer": "tiny", "dtype": "float32"}
    model, tok = load_model(ModelConfig(**model_cfg))
    hidden = model.config.text_config.hidden_size
    max_len = max(args.frames) // 2 * TOKENS_PER_PATCH + 64 + args.max_new_tokens
    params = SamplingParams(n=args.group, temperature=1.0, max_new_tokens=args.max_new_tokens, seed=0)
    mb = sum(t.numel() * t.element_size() for _, t in policy_tensors(model)) / 2**20

    work = Path(tempfile.mkdtemp(prefix="lvr-bench-rollout-"))
    local = TransformersEngine(model, tok, batch_size=64)
    engines: dict[str, object] = {"hf-generate": GenerateBaseline(model, tok, local.suppress), "transformers": local}
    procs = []
    proc, url = start_server("transformers", model_cfg, work, max_len)
    procs.append(proc)
    engines["transformers+server"] = RemoteRolloutEngine(url, request_timeout_s=1800)
    if has_vllm:
        from lvr_trainer.rollout.vllm_engine import VllmEngine

        engines["vllm"] = VllmEngine.from_model(model, tok, work / "vllm-model", dtype="float32",
                                                max_model_len=max_len, seed=0)
        proc, url = start_server("vllm", model_cfg, work, max_len)
        procs.append(proc)
        engines["vllm+server"] = RemoteRolloutEngine(url, request_timeout_s=1800)
    else:
        print("vLLM not importable here: vllm rows skipped (run with .venv-vllm/bin/python)")

    sync_rows = []
    try:
        for name, engine in engines.items():
            if name in ("hf-generate", "transformers"):
                continue                       # generate from the live module: nothing to load
            seconds = timed(lambda: engine.sync_weights(model), 1)
            sync_rows.append([name, f"{mb:.1f}", f"{seconds:.3f}", f"{seconds * 100 / mb:.3f}"])
        rows = []
        for frames in args.frames:
            requests = [synthetic_request(tok, hidden, frames, seed=i) for i in range(args.prompts)]
            base = None
            for name, engine in engines.items():
                torch.set_num_threads(args.threads)   # vLLM's in-process init lowers this process's threads to 1
                engine.generate(requests[:1], SamplingParams(n=2, temperature=1.0, max_new_tokens=4, seed=1))
                out = []
                seconds = timed(lambda: out.append(engine.generate(requests, params)), args.reps)
                tokens = sum(len(r.token_ids) for g in out[-1] for r in g)
                replies = args.prompts * args.group
                base = base or seconds
                rows.append([name, frames, len(requests[0].input_ids), torch.get_num_threads(), f"{replies / seconds:.2f}",
                             f"{tokens / seconds:.1f}", f"{seconds:.2f}", f"{base / seconds:.2f}x"])
    finally:
        for p in procs:
            p.kill()
    print(f"\nrollout throughput: preset {args.preset} ({mb:.1f} MB fp32), {args.prompts} prompts x G={args.group}, "
          f"{args.max_new_tokens} new tokens max, temperature 1; {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(format_table(["engine", "frames", "prompt tokens", "threads", "replies/s", "tokens/s", "s/call",
                        "vs hf-generate"],
                       rows))
    print("\nweight sync (whole model into the engine)")
    print(format_table(["engine", "MB", "seconds", "s per 100 MB"], sync_rows))


if __name__ == "__main__":
    main()
