"""One GRPO step three ways, per phase, in seconds and peak memory: (a) per-forward vision, (b) cached,
(c) cached + shared prefix (issue 19).

Every mode runs `lvr_trainer.train.rl.rl_step` itself (P prompts, G sampled replies each, old and reference
log-probs, one PPO update), each in a process of its own so that memory figures do not mix:

(a) *per-forward vision*: what an RL framework without an embedding cache does with a frozen vision tower.
    The rollout engine encodes each video once (an engine's encoder cache, as vLLM keeps one); every old,
    reference and update forward of every sequence then runs the tower again on the pixel values (the
    step's micro-batches carry pixels instead of embeddings; the tower runs without gradients, frozen).
    Decoding and patchifying are counted once, in `features` (a strong baseline: no repeated decode).
(b) *cached*: the step with the embedding cache, one sequence per reply (`rl.shared_prefix: false`).
(c) *cached + shared prefix*: the default step: each prompt once per micro-batch, its replies attending to it.

The rollout is the same in all three (our one-prefill-per-prompt sampler, like an engine's prefix cache), so
the modes differ only in what the scoring phases compute. `features` starts from a cold cache each step.
Peak memory: the largest RSS seen (sampled every 5 ms) during a phase, minus the RSS when the step began, in
one extra step after the timed ones with freed heap returned to the OS (`malloc_trim`) before each phase, so
model and framework memory, the same in all modes, do not hide the phase's own footprint (the trim is kept
out of the timed steps: faulting the pages back in slows every phase).

    .venv/bin/python bench/rl_step.py [--presets tiny small] [--frames 64 256 1024] [--modes a b c]
                                      [--group 8] [--reps 1] [--warmup 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

PHASES = ("features", "rollout", "old_logprobs", "ref_logprobs", "update")
MODES = {"a": "per-forward vision", "b": "cached", "c": "cached + shared prefix"}
PAGE = os.sysconf("SC_PAGE_SIZE")


def trim() -> None:
    """Hand freed heap pages back to the OS (glibc), so that an RSS delta shows what a phase allocates, not
    what an earlier phase or step freed but kept."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakSampler:
    """A thread that tracks the largest RSS since the last `reset()`."""

    def __init__(self, interval: float = 0.005):
        self.peak, self._stop = rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.peak = max(self.peak, rss_bytes())

    def reset(self) -> None:
        self.peak = rss_bytes()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def make_data(root: Path, frames: int, size: int) -> Path:
    """Synthetic videos long enough for `frames` frames at 4 fps."""
    from lvr_trainer.data.synth import SynthSpec, synthesise

    out = root / f"data-{frames}-{size}"
    if not (out / "train.jsonl").is_file():
        synthesise(out, SynthSpec(videos=2, seconds=frames / 4, fps=4, width=size, height=size, events=8,
                                  val_fraction=0.0, test_fraction=0.0))
    return out


def make_config(preset: str, data: Path, frames: int, size: int, group: int, new_tokens: int, prompts: int,
                shared_prefix: bool, out: Path):
    from lvr_trainer.config import TrainerConfig

    return TrainerConfig.model_validate({
        "model": {"preset": preset, "tokenizer": "tiny"},
        "data": {"train": str(data / "train.jsonl"),
                 "sampling": {"num_frames": frames, "max_pixels": size * size, "min_pixels": 784}},
        "train": {"steps": 1000, "batch_size": prompts, "bf16": False},
        "cache": {"enabled": False},
        "optim": {"lr": 1e-4},
        "output": {"dir": str(out), "tensorboard": False},
        "rl": {"group_size": group, "max_new_tokens": new_tokens, "kl_coef": 0.001,
               "shared_prefix": shared_prefix},
    })


class WithPixels:
    """Mode (a)'s feature source: each video decoded and patchified once (in the `features` phase), encoded
    once for the rollout (an engine's encoder cache); `pixel_features` hands the scoring forwards the pixels,
    which they re-encode every time."""

    def __init__(self, pixels, model):
        self.pixels, self.model, self.vision_passes, self._memo = pixels, model, 0, {}

    def __call__(self, record):
        from lvr_trainer.model.encode import encode_video
        from lvr_trainer.inputs.features import VideoFeatures

        if record.video not in self._memo:
            raw = self.pixels(record)                                          # decode + patchify
            embeds = encode_video(self.model, raw.pixel_values, raw.grid_thw)   # the rollout engine's encoding
            self.vision_passes += 1
            self._memo[record.video] = (VideoFeatures(embeds, raw.grid_thw, raw.second_per_grid_t), raw)
        return self._memo[record.video][0]

    def pixel_features(self, record):
        self(record)
        return self._memo[record.video][1]


def per_forward_vision(run):
    """Make `rl_step`'s scoring phases carry pixels (mode a): the examples' features lose their embeddings,
    so `response_logprobs` runs the vision tower for every sequence of every forward. Returns the feature
    source factory for each step."""
    import lvr_trainer.train.rl as rl_mod
    from lvr_trainer.inputs.features import VideoFeatureSource

    cfg = run.cfg
    original = rl_mod.reply_examples

    def reply_examples(model, tokenizer, records, rollouts, source, think, group_size):
        examples = original(model, tokenizer, records, rollouts, source, think, group_size)
        for i, ex in enumerate(examples):
            ex.features = source.pixel_features(records[i // group_size])
        return examples

    rl_mod.reply_examples = reply_examples
    return lambda: WithPixels(VideoFeatureSource(run.model, run.processor, cfg.data.sampling,
                                                 Path(cfg.data.train).parent, trainable_vision=True), run.model)


def measure_one(args) -> dict:
    """One (preset, frames, mode) in this process: warm-up steps, then `reps` measured steps."""
    import lvr_trainer.train.rl as rl_mod
    from lvr_trainer.inputs.features import make_feature_source

    torch.set_num_threads(args.threads)
    root = Path(args.root)
    data = make_data(root, args.frames, args.size)
    cfg = make_config(args.preset, data, args.frames, args.size, args.group, args.new_tokens, args.prompts,
                      args.mode == "c", root / f"run-{args.preset}-{args.frames}-{args.mode}")
    sampler = PeakSampler()
    seconds, peaks = {p: [] for p in PHASES}, {p: [] for p in PHASES}
    current = {}

    class Timed(rl_mod.PhaseTimer):
        @contextlib.contextmanager
        def __call__(self, phase):
            if measuring_memory or not args.memory_step:
                trim()
            sampler.reset()
            with super().__call__(phase):
                yield
            current[phase] = max(current.get(phase, 0), sampler.peak)

    rl_mod.PhaseTimer = Timed
    run = rl_mod._setup(cfg, resume=False)
    fresh = per_forward_vision(run) if args.mode == "a" else (lambda: make_feature_source(run.model, run.processor,
                                                                                        cfg, data))
    step_out = {}
    measuring_memory = False
    # warm-up steps, timed steps, then (unless --memory-step 0) one step for memory only: handing freed heap back
    # to the OS before each phase (trim) makes the phase fault its pages in again, which would slow the timing
    for step in range(args.warmup + args.reps + (1 if args.memory_step else 0)):
        measuring_memory = args.memory_step and step >= args.warmup + args.reps
        run.source = fresh()                                                          # cold cache
        current.clear()
        if measuring_memory or not args.memory_step:
            trim()
        base = rss_bytes()
        m = rl_mod.rl_step(run, step)
        if step < args.warmup:
            continue
        for p in PHASES:
            if measuring_memory or not args.memory_step:
                peaks[p].append(max(current.get(p, base) - base, 0))
            if not measuring_memory:
                seconds[p].append(m[f"time/{p}"])
        step_out = {"vision_calls": m["cache/vision_calls"], "reply_len": m["rollout/reply_len"]}
    sampler.close()
    tokens = int(run.source(run.records[0]).embeds.shape[0])
    return {"preset": args.preset, "frames": args.frames, "mode": args.mode, "video_tokens": tokens,
            "seconds": {p: statistics.median(v) for p, v in seconds.items()},
            "peak_mib": {p: max(v) / 2**20 for p, v in peaks.items()}, **step_out}


def table(results: list[dict]) -> str:
    from lvr_trainer.utils.table import format_table

    rows = []
    steps = {(r["preset"], r["frames"], r["mode"]): sum(r["seconds"].values()) for r in results}
    peaks = {(r["preset"], r["frames"], r["mode"]): max(r["peak_mib"][p] for p in PHASES[2:]) for r in results}
    for r in results:
        key = (r["preset"], r["frames"])
        s, step = r["seconds"], steps[(*key, r["mode"])]
        vs = lambda m: f"{steps[(*key, m)] / step:.2f}x" if (*key, m) in steps and r["mode"] != m else ""  # noqa: E731
        mem = lambda m: f"{peaks[(*key, r['mode'])] / max(peaks[(*key, m)], 1e-9):.2f}" if (*key, m) in peaks and r["mode"] != m else ""  # noqa: E731,E501
        rows.append([r["preset"], r["frames"], r["video_tokens"], f"{r['reply_len']:.1f}", MODES[r["mode"]],
                     *(f"{s[p]:.2f}" for p in PHASES), f"{step:.2f}", vs("a"), vs("b"),
                     " / ".join(f"{r['peak_mib'][p]:.0f}" for p in PHASES[2:]), mem("b")])
    return format_table(["preset", "frames", "video tok", "reply tok", "mode", *PHASES, "step s", "vs (a)", "vs (b)",
                         "peak MiB old/ref/update", "peak vs (b)"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--frames", nargs="+", type=int, default=[64, 256, 1024])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--size", type=int, default=112, help="frame width = height in pixels")
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=1, help="prompts per micro-batch (train.batch_size)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-step", type=int, default=1, choices=(0, 1),
                    help="1: peaks from one extra step with freed heap trimmed before each phase, seconds from the "
                    "others; 0: both from the same steps (trimmed)")
    ap.add_argument("--json", help="append each result as a JSON line to this file")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)     # the per-mode child process
    ap.add_argument("--preset", help=argparse.SUPPRESS)
    ap.add_argument("--frames-one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        args.frames = args.frames_one
        print(json.dumps(measure_one(args)))
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            for frames in args.frames:
                for mode in args.modes:
                    cmd = [sys.executable, __file__, "--one", "--preset", preset, "--frames-one", str(frames),
                           "--mode", mode, "--root", tmp, *_shared(args)]
                    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
                    if out.returncode != 0:
                        sys.exit(f"{preset} {frames} frames mode {mode} failed:\n{out.stderr[-3000:]}")
                    results.append(json.loads(out.stdout.strip().splitlines()[-1]))
                    print(f"# {preset} {frames} {MODES[mode]}: {sum(results[-1]['seconds'].values()):.1f} s",
                          file=sys.stderr, flush=True)
                    if args.json:
                        with open(args.json, "a") as f:
                            f.write(json.dumps(results[-1]) + "\n")
    print(f"# bench/rl_step.py: {args.prompts} prompt(s) x G={args.group}, up to {args.new_tokens} new tokens, "
          f"{args.size}x{args.size} frames, {platform.processor() or platform.machine()}, torch threads "
          f"{args.threads}, median of {args.reps} step(s) after {args.warmup} warm-up; seconds per phase")
    print(table(results))


def _shared(args) -> list[str]:
    return ["--size", str(args.size), "--group", str(args.group), "--prompts", str(args.prompts),
            "--new-tokens", str(args.new_tokens), "--reps", str(args.reps), "--warmup", str(args.warmup),
            "--threads", str(args.threads), "--memory-step", str(args.memory_step)]


if __name__ == "__main__":
    main()
