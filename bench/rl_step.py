"""One GRPO step (G replies to one prompt) with the embedding cache vs. re-encoding the video for every
rollout and every prefill, per phase (MR-SP stage 1; the paper reports 2.1x for its whole MR-SP).

`cached` is `lvr_trainer.train.rl.rl_step` itself, on a cold feature cache (the step decodes, patchifies
and encodes the video once, then G rollouts, the policy and reference prefills and the update reuse the
embeddings). `re-encode` is the same step plus the vision-tower runs a pipeline without the cache makes:
G in the rollout (generate with pixel values expands every reply's copy), G in each prefill (policy,
reference) and G per update pass; those runs are executed for real (`encode_video` on the step's pixel
values, decode and patchify counted once), not extrapolated. Phase seconds are the median of `--reps`
steps after one warm-up step; each step samples new replies, so replies (and thus times) vary a little.

    .venv/bin/python bench/rl_step.py [--presets tiny small] [--frames 64 256] [--group 8] [--reps 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

PHASES = ("features", "rollout", "old_logprobs", "ref_logprobs", "update")


def make_data(root: Path, frames: int, size: int) -> Path:
    """One synthetic video long enough for `frames` frames at 4 fps."""
    from lvr_trainer.data.synth import SynthSpec, synthesise

    out = root / f"data-{frames}"
    if not (out / "train.jsonl").is_file():
        synthesise(out, SynthSpec(videos=2, seconds=frames / 4, fps=4, width=size, height=size, events=8,
                                  val_fraction=0.0, test_fraction=0.0))
    return out


def make_config(preset: str, data: Path, frames: int, size: int, group: int, new_tokens: int, out: Path):
    from lvr_trainer.config import TrainerConfig

    return TrainerConfig.model_validate({
        "model": {"preset": preset, "tokenizer": "tiny"},
        "data": {"train": str(data / "train.jsonl"),
                 "sampling": {"num_frames": frames, "max_pixels": size * size, "min_pixels": 784}},
        "train": {"steps": 1000, "batch_size": 1, "bf16": False},
        "cache": {"enabled": False},
        "optim": {"lr": 1e-4},
        "output": {"dir": str(out), "tensorboard": False},
        "rl": {"group_size": group, "max_new_tokens": new_tokens, "kl_coef": 0.001},
    })


def reencode_seconds(run, record, group: int, epochs: int) -> dict[str, float]:
    """Run the vision tower as often as a cache-less step would, per phase; returns seconds per phase."""
    from lvr_trainer.model.encode import encode_video
    from lvr_trainer.train.features import VideoFeatureSource

    cfg = run.cfg
    raw = VideoFeatureSource(run.model, run.processor, cfg.data.sampling, Path(cfg.data.train).parent,
                             trainable_vision=True)(record)           # decode + patchify (counted once)
    pixels, grid = raw.pixel_values.to(run.device), raw.grid_thw.to(run.device)
    runs = {"rollout": (run.model, group), "old_logprobs": (run.model, group),
            "ref_logprobs": (run.reference, group), "update": (run.model, group * epochs)}
    out = {}
    for phase, (model, count) in runs.items():
        t0 = time.perf_counter()
        for _ in range(count):
            encode_video(model, pixels, grid)
        out[phase] = time.perf_counter() - t0
    return out


def measure(preset: str, frames: int, args, root: Path) -> dict:
    from lvr_trainer.train.rl import _setup, rl_step
    from lvr_trainer.train.setup import make_feature_source

    data = make_data(root, frames, args.size)
    cfg = make_config(preset, data, frames, args.size, args.group, args.new_tokens, root / f"run-{preset}-{frames}")
    run = _setup(cfg, resume=False)
    cached, extra = {p: [] for p in PHASES}, {p: [] for p in PHASES}
    for step in range(args.reps + 1):
        run.source = make_feature_source(run.model, run.processor, cfg, data)  # cold cache
        m = rl_step(run, step)
        add = reencode_seconds(run, _step_record(run, step), cfg.rl.group_size, cfg.rl.ppo_epochs)
        if step == 0:
            continue  # warm-up
        for p in PHASES:
            cached[p].append(m[f"time/{p}"])
            extra[p].append(add.get(p, 0.0))
    tokens = int(run.source(run.records[0]).embeds.shape[0])
    med = {p: statistics.median(cached[p]) for p in PHASES}
    base = {p: med[p] + statistics.median(extra[p]) for p in PHASES}
    return {"preset": preset, "frames": frames, "video_tokens": tokens, "cached": med, "reencode": base}


def _step_record(run, step: int):
    from lvr_trainer.train.batching import global_indices

    (i,) = global_indices(len(run.records), run.cfg.train.seed, step, 1)
    return run.records[i]


def table(results: list[dict]) -> str:
    from lvr_trainer.utils.table import format_table

    rows = []
    for r in results:
        for mode in ("reencode", "cached"):
            t = r[mode]
            rows.append([r["preset"], r["frames"], r["video_tokens"], mode, *(f"{t[p]:.2f}" for p in PHASES),
                         f"{sum(t.values()):.2f}",
                         f"{sum(r['reencode'].values()) / sum(r['cached'].values()):.2f}x" if mode == "cached" else ""])
    return format_table(["preset", "frames", "video tok", "mode", *PHASES, "step s", "speed-up"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--frames", nargs="+", type=int, default=[64, 256])
    ap.add_argument("--size", type=int, default=112, help="frame width = height in pixels")
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(p, f, args, Path(tmp)) for p in args.presets for f in args.frames]
    print(f"# bench/rl_step.py: G={args.group}, {args.new_tokens} new tokens, {args.size}x{args.size} frames, "
          f"{platform.processor() or platform.machine()}, torch threads {args.threads}; seconds per phase")
    print(table(results))


if __name__ == "__main__":
    main()
