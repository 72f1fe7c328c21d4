"""Benchmark: one weight sync from the trainer to `lvr rollout-server`, seconds and peak host memory of each side.

Two processes on loopback: a trainer holding a float32 "policy" of the given size (random weights, named
like a Qwen-VL language model) and a rollout server holding its own copy, in the dtype each path runs.
Paths, each in fresh processes (peak RSS, /proc VmHWM, is a process's lifetime peak):
  one-body fp32     the whole state dict in float32 as one safetensors body (POST /weights): what a
                    trainer that pushes without the bucketed transfer sends; server model float32
  buckets http      bf16 buckets (rollout.weight_bucket_mb) streamed over HTTP, staged on the server's disk,
                    loaded at commit; server model bf16 (model.dtype of a bf16-mixed job)
  buckets shared    the same buckets as files on a shared volume (/dev/shm, as the pod's memory volume)
Columns: sync seconds (the trainer's sync_weights call), GB/s of the trainer's float32 model, and each
side's peak RSS above its model ("extra"), against the bound 0.5 x model + one bucket.

    .venv/bin/python bench/weight_sync.py [--sizes-mb 100 1000 4000] [--bucket-mb 512]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

DIM = 2048          # one 2048 x 2048 float32 matrix: 16 MiB


def policy(size_mb: int, dtype: torch.dtype, fill: bool = True) -> torch.nn.Module:
    """A module of about `size_mb` MB of float32 parameters, named like a language model."""
    layers = max(1, round(size_mb * 1e6 / (DIM * DIM * 4)))
    model = torch.nn.Module()
    model.model = torch.nn.Module()
    model.model.language_model = torch.nn.ParameterList(
        torch.nn.Parameter(torch.empty(DIM, DIM, dtype=dtype)) for _ in range(layers))
    if fill:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
    return model


def vm_hwm_bytes(pid: int = 0) -> int:
    for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/<pid>/status")


def model_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


class HeldModel:
    """The server's engine: a copy of the policy that weights load into (no generation in this benchmark)."""

    def __init__(self, model):
        self.model = model

    def weight_shapes(self):
        from lvr_trainer.rollout.weights import parameter_shapes

        return parameter_shapes(self.model)

    def load_weights(self, named_tensors, checked: bool = False):
        from lvr_trainer.rollout.weights import load_into

        load_into(self.model, named_tensors, checked=checked)

    def generate(self, requests, params):
        raise NotImplementedError("this benchmark only moves weights")


def serve(args) -> None:
    from lvr_trainer.rollout.server import ServerLimits, serve as run_server

    dtype = getattr(torch, args.dtype)
    model = policy(args.size_mb, dtype, fill=True)
    print(json.dumps({"model_bytes": model_bytes(model), "rss_ready": vm_hwm_bytes()}), flush=True)
    run_server(HeldModel(model), "127.0.0.1", args.port, limits=ServerLimits(max_body_bytes=64 << 30),
               staging_dir=args.staging, shared_dir=args.shared)


def push(args) -> None:
    from lvr_trainer.rollout.client import RemoteRolloutEngine
    from lvr_trainer.rollout.weights import policy_tensors

    model = policy(args.size_mb, torch.float32)
    ready = vm_hwm_bytes()
    dtype = None if args.path == "one-body" else torch.bfloat16
    client = RemoteRolloutEngine(f"http://127.0.0.1:{args.port}", weight_dtype=dtype, bucket_bytes=args.bucket_mb << 20,
                                 transfer="http" if args.path == "http" else "shared", request_timeout_s=3600)
    client.wait_ready(600, poll_s=0.2)
    t0 = time.perf_counter()
    if args.path == "one-body":
        client.load_weights(policy_tensors(model))
    else:
        client.sync_weights(model)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "model_bytes": model_bytes(model), "rss_ready": ready,
                      "rss_peak": vm_hwm_bytes()}), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(size_mb: int, path: str, bucket_mb: int) -> dict:
    port, me = free_port(), [sys.executable, __file__]
    staging = tempfile.mkdtemp(prefix="lvr-bench-staging-")
    shared = tempfile.mkdtemp(prefix="lvr-bench-shared-", dir="/dev/shm")
    dtype = "float32" if path == "one-body" else "bfloat16"
    server = subprocess.Popen(me + ["--serve", "--size-mb", str(size_mb), "--port", str(port), "--dtype", dtype,
                                    "--staging", staging, "--shared", shared],
                              stdout=subprocess.PIPE, text=True)
    try:
        s_info = json.loads(server.stdout.readline())
        out = subprocess.run(me + ["--push", "--size-mb", str(size_mb), "--port", str(port), "--path", path,
                                   "--bucket-mb", str(bucket_mb)], capture_output=True, text=True, check=True)
        t_info = json.loads(out.stdout.strip().splitlines()[-1])
        s_peak = vm_hwm_bytes(server.pid)
    finally:
        server.kill()
        server.wait()
        subprocess.run(["rm", "-rf", staging, shared], check=False)
    return {"size_mb": size_mb, "path": path, "seconds": t_info["seconds"],
            "gbps": t_info["model_bytes"] / t_info["seconds"] / 1e9,
            "trainer_model": t_info["model_bytes"], "trainer_extra": t_info["rss_peak"] - t_info["rss_ready"],
            "server_model": s_info["model_bytes"], "server_extra": s_peak - s_info["rss_ready"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes-mb", type=int, nargs="+", default=[100, 1000, 4000])
    p.add_argument("--bucket-mb", type=int, default=512)
    p.add_argument("--paths", nargs="+", default=["one-body", "http", "shared"])
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--push", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size-mb", type=int, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--dtype", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--staging", help=argparse.SUPPRESS)
    p.add_argument("--shared", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.serve:
        return serve(args)
    if args.push:
        return push(args)
    print(f"# weight sync, {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
          f"bucket {args.bucket_mb} MiB; extra = peak RSS above the process's model")
    print(f"{'model':>8} {'path':>14} {'seconds':>8} {'GB/s':>6} {'trainer extra':>14} {'server extra':>13} "
          f"{'bound':>8} {'within':>6}")
    mb = lambda b: f"{b / 2**20:8.0f} MiB"  # noqa: E731
    for size in args.sizes_mb:
        for path in args.paths:
            r = one_run(size, path, args.bucket_mb)
            bounds = [0.5 * m + (args.bucket_mb << 20) for m in (r["trainer_model"], r["server_model"])]
            within = r["trainer_extra"] <= bounds[0] and r["server_extra"] <= bounds[1]
            print(f"{size:>6}MB {('one-body fp32' if path == 'one-body' else 'buckets ' + path):>14} "
                  f"{r['seconds']:8.2f} {r['gbps']:6.2f} {mb(r['trainer_extra']):>14} {mb(r['server_extra']):>13} "
                  f"{mb(min(bounds)):>8} {'yes' if within else 'NO':>6}", flush=True)


if __name__ == "__main__":
    main()
