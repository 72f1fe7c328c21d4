"""Stage 2: GRPO reinforcement learning from cached video embeddings (`lvr rl --config FILE`).

One RL step, top to bottom (DESIGN.md, "Data flow of one RL step"):
    global batch of P prompts (a pure function of seed and step) -> this rank's share
    -> features: vision tower at most once per distinct video (then memory / embedding cache)
    -> rollout: G sampled replies per prompt from [text embeds + cached video embeds] (under sequence
       parallelism sampled on each SP group's first rank and broadcast to its peers)
    -> reward: weighted terms of `rl.rewards` -> group-normalised advantages
    -> old log-probs (policy) and reference log-probs (frozen initial policy; skipped when kl_coef = 0)
       by prefill over prompt + reply tokens, reusing the cached embeddings (no vision pass); with
       rl.shared_prefix each prompt once and its replies attending to it (train/packing.py)
    -> update: rl.ppo_epochs x rl.mini_batches optimizer steps of policy_loss + kl_coef * kl_loss
    -> metrics (reward/*, rollout/*, actor/*, cache/*, time/*), checkpoint, periodic validation.

Sizes: a rank's rollout batch is train.batch_size x train.grad_accum prompts; a micro-batch (one
forward/backward) is train.batch_size prompts x G replies; a mini-batch (one optimizer step) is
train.grad_accum / rl.mini_batches micro-batches.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import torch

from lvr_trainer.algo.rewards import WeightedReward
from lvr_trainer.config import TrainerConfig
from lvr_trainer.data.schema import VideoQARecord
from lvr_trainer.data.split import load_split
from lvr_trainer.inputs.features import make_feature_source
from lvr_trainer.model.loading import load_policy, vision_tower
from lvr_trainer.parallel import heartbeat
from lvr_trainer.parallel.data_parallel import distribute_weights, is_fsdp, wrap_model
from lvr_trainer.parallel.grid import ProcessGrid
from lvr_trainer.parallel.timeouts import explain_timeout
from lvr_trainer.rollout.base import RolloutEngine
from lvr_trainer.train.checkpoint import latest_checkpoint
from lvr_trainer.train.metrics import Metrics, RunLogger
from lvr_trainer.train.optim import build_optimizer, finish_step
from lvr_trainer.train.rl_rollout import (micro_batches, make_engine, reply_examples, reward_from_config,
                                          sample_for_sp_group, sampling_params, score_groups)
from lvr_trainer.train.rl_update import ppo_update, prefill_logprobs, prefill_metrics
from lvr_trainer.train.validation import validate_on_all_ranks
from lvr_trainer.train.batch_sampling import global_indices, rank_micro_batches
from lvr_trainer.train.checkpoint_resume import resume_from
from lvr_trainer.train.checkpoint_save import checkpoint_metrics, finish_uploads, save_step, stop_if_preempted
from lvr_trainer.train.precision import autocast_for
from lvr_trainer.train.preemption import StopOnSigterm
from lvr_trainer.train.run_start import start_run
from lvr_trainer.train.unreadable_videos import UnreadableVideos


class VisionCounter:
    """Counts forward calls of the vision towers it watches (policy and reference): the proof that
    rollouts and prefills never run the tower."""

    def __init__(self, *models):
        self.calls = 0
        self._hooks = [vision_tower(m).register_forward_hook(self._hit) for m in models if m is not None]

    def _hit(self, *_):
        self.calls += 1

    def close(self) -> None:
        for h in self._hooks:
            h.remove()


class PhaseTimer:
    """`with timer("rollout"):` adds the seconds to `time/rollout`, and tells the other ranks (heartbeat)
    that this rank entered that phase of `step`."""

    def __init__(self, step: int = 0):
        self.seconds: dict[str, float] = {}
        self.step = step

    @contextlib.contextmanager
    def __call__(self, phase: str):
        heartbeat.publish(phase, self.step)
        t0 = time.perf_counter()
        yield
        self.seconds[f"time/{phase}"] = self.seconds.get(f"time/{phase}", 0.0) + time.perf_counter() - t0


@dataclass
class RLRun:
    """Everything one GRPO run holds, built once by `_setup` and passed down to each step."""

    cfg: TrainerConfig
    grid: ProcessGrid
    device: torch.device
    output: Any                       # train.checkpoint_upload output (local dir + optional S3 mirror)
    model: torch.nn.Module            # the policy (FSDP-wrapped when sharded)
    tokenizer: Any
    processor: Any
    reference: torch.nn.Module | None  # frozen initial policy; None when rl.kl_coef is 0
    records: list[VideoQARecord]
    source: Any                       # VideoFeatureSource: features per record (cache, memory)
    unreadable: UnreadableVideos
    engine: RolloutEngine
    counter: VisionCounter
    optimizer: torch.optim.Optimizer
    scheduler: Any
    reward: WeightedReward
    initial_weights: str | None
    start: int                        # the first step to run (after a resume)
    val: tuple[list[VideoQARecord], Any] | None = None   # validation records and their feature source

    def autocast(self):
        return autocast_for(self.cfg, self.device)


class RLConfigError(ValueError):
    """A config that `lvr rl` cannot run (the message says which key to change)."""


def check_rl_config(cfg: TrainerConfig) -> None:
    """Errors that would otherwise surface deep inside the first step."""
    if cfg.rl is None:
        raise RLConfigError("`lvr rl` needs an `rl:` section in the config (GRPO settings; `rl: {}` takes the "
                         "defaults)")
    if not cfg.model.freeze_vision:
        raise RLConfigError("`lvr rl` needs model.freeze_vision: true: rollouts and prefills reuse the cached "
                         "video embeddings, which a trained vision tower would invalidate")
    if cfg.train.grad_accum % cfg.rl.mini_batches:
        raise RLConfigError(f"train.grad_accum={cfg.train.grad_accum} must be a multiple of rl.mini_batches="
                         f"{cfg.rl.mini_batches}: each mini-batch is a whole number of micro-batches")


def load_reference(cfg: TrainerConfig, grid: ProcessGrid, device: torch.device):
    """The frozen reference policy: the run's initial model (cfg.model, also after a resume), or None
    when rl.kl_coef is 0. Under FSDP it is sharded like the policy (rank 0 reads the weights, every rank
    keeps 1/world of them), with no gradients and no optimizer state; `rl.reference_offload` keeps its shards
    in host memory between uses."""
    if cfg.rl.kl_coef == 0:
        return None
    sharded = is_fsdp(cfg.parallel, grid)
    ref, _, _ = load_policy(cfg.model, device if grid.rank == 0 or not sharded else torch.device("meta"))
    ref.eval().requires_grad_(False)
    if sharded:
        ref = distribute_weights(ref, cfg.parallel, grid, cfg.train.precision, offload=cfg.rl.reference_offload,
                                 keep_whole=vision_tower(ref))
    return ref


def rl_step(run: RLRun, step: int) -> dict[str, float]:
    """One GRPO step on this rank; returns its metrics."""
    cfg, grid, model, tokenizer, source = run.cfg, run.grid, run.model, run.tokenizer, run.source
    rl, g, timer = cfg.rl, cfg.rl.group_size, PhaseTimer(step + 1)
    global_batch = cfg.train.batch_size * cfg.train.grad_accum * grid.dp_size
    indices = global_indices(len(run.records), cfg.train.seed, step, global_batch)
    mine = [i for mb in rank_micro_batches(indices, cfg.train.batch_size, cfg.train.grad_accum, grid.dp_size,
                                           grid.dp_rank) for i in mb]
    passes0, calls0 = source.vision_passes, run.counter.calls
    with timer("features"):       # every video's features, unreadable ones replaced (see UnreadableVideos)
        mine = run.unreadable.substitute(mine, run.records, source)
    records = [run.records[i] for i in mine]
    with timer("weight_sync"):    # an engine with its own copy (vLLM, a sidecar) gets the updated policy
        run.engine.sync_weights(model)
    with timer("rollout"), run.autocast():     # the same precision as the prefill that scores it
        params = sampling_params(rl, cfg.train.seed + 7919 * grid.dp_rank, step)
        rollouts = sample_for_sp_group(run.engine, model, tokenizer, records, source, params, cfg.sft.think,
                                       grid)
    with timer("reward"):
        scored = score_groups(run.reward, rl, records, rollouts)
    with timer("old_logprobs"):
        examples = reply_examples(model, tokenizer, records, rollouts, source, cfg.sft.think, g)
        micros = micro_batches(examples, rollouts, scored.advantages, cfg.train.batch_size * g,
                               tokenizer.pad_token_id, run.device, group_size=g if rl.shared_prefix else None)
        prefill_logprobs(model, micros, grid, rl.temperature, "old_logprobs", run.autocast)
    if run.reference is not None:
        with timer("ref_logprobs"):
            prefill_logprobs(run.reference, micros, grid, rl.temperature, "ref_logprobs", run.autocast)
    with timer("update"):
        finish = lambda: finish_step(model, run.optimizer, run.scheduler, grid, cfg)  # noqa: E731
        update = ppo_update(model, micros, rl, grid, finish, run.autocast, run.device)
    out = {**scored.metrics, **prefill_metrics(micros), **update, **timer.seconds,
           "cache/vision_passes": float(source.vision_passes - passes0),
           "cache/vision_calls": float(run.counter.calls - calls0),
           "cache/videos": float(len({r.video for r in records})),
           "data/unreadable_videos": float(len(run.unreadable.bad)),
           "actor/lr": run.scheduler.get_last_lr()[0]}
    out["time/step"] = sum(timer.seconds.values())
    return out


def _setup(cfg: TrainerConfig, resume: bool) -> RLRun:
    """Load policy (or the latest checkpoint's), reference, data, features, engine, optimizer; resume."""
    check_rl_config(cfg)
    begun = start_run(cfg, resume, "rl")
    grid, device, model, tokenizer = begun.grid, begun.device, begun.model, begun.tokenizer
    reference = load_reference(cfg, grid, device)
    engine = make_engine(cfg, model, tokenizer, cfg.train.batch_size * cfg.rl.group_size, cfg.train.seed)
    counter = VisionCounter(model, reference)
    model = wrap_model(model, cfg.parallel, grid, keep_whole=vision_tower(model))
    total_updates = cfg.train.steps * cfg.rl.ppo_epochs * cfg.rl.mini_batches
    optimizer, scheduler = build_optimizer(model, cfg.optim, total_updates)
    start = resume_from(begun.checkpoint, model, optimizer, scheduler, cfg, grid) if begun.checkpoint else 0
    return RLRun(cfg=cfg, grid=grid, device=device, output=begun.output, model=model, tokenizer=tokenizer,
                 processor=begun.processor, reference=reference, records=begun.records, source=begun.source,
                 unreadable=begun.unreadable, engine=engine, counter=counter, optimizer=optimizer,
                 scheduler=scheduler, reward=reward_from_config(cfg.rl), initial_weights=begun.initial_weights,
                 start=start)


def validate(run: RLRun) -> dict[str, float]:
    """Greedy strict accuracy and format rate on `data.val`, with `lvr eval`'s scorer, every rank scoring
    its share (train/validation.py: a rank that generated alone would hang the others under FSDP)."""
    cfg = run.cfg
    if run.val is None:
        records, base_dir = load_split(cfg.data.val, cfg.data.max_bad_row_fraction, cfg.data.video_root)
        run.val = (records, make_feature_source(run.model, run.processor, cfg, base_dir))
    records, source = run.val
    return validate_on_all_ranks(run.model, run.tokenizer, records, source, cfg.eval, run.device)


def _wants_eval(cfg: TrainerConfig, step: int) -> bool:
    return bool(cfg.data.val and cfg.train.eval_every and step % cfg.train.eval_every == 0)


def run_rl(cfg: TrainerConfig, resume: bool = False, stop_after: int | None = None,
           stop: StopOnSigterm | None = None) -> dict:
    """Train with GRPO; returns a summary (per-step metrics in `history`). `resume` continues from
    `output.dir`'s latest checkpoint; `stop_after` ends the run after that many steps (tests); `stop`:
    SIGTERM ends the run at the next step boundary with a checkpoint (raises `Preempted`)."""
    run = _setup(cfg, resume)
    try:
        return _train(run, stop_after, stop or StopOnSigterm())
    finally:
        if hasattr(run.engine, "shutdown"):    # a sidecar on a Kubernetes without native sidecars
            run.engine.shutdown()              # keeps the pod running until it exits


def _train(run: RLRun, stop_after: int | None, stop: StopOnSigterm) -> dict:
    cfg, start, grid, output = run.cfg, run.start, run.grid, run.output
    rank0 = grid.rank == 0
    logger = RunLogger(output, cfg.train.steps, "rl", cfg.output.tensorboard, rank0, start,
                       output_uri=cfg.output.dir, initial_weights=run.initial_weights)
    metrics, history, t0, last = Metrics(), [], time.perf_counter(), start
    if start == 0 and _wants_eval(cfg, 0):
        logger.log(0, validate(run))
    for step in range(start, cfg.train.steps):
        if stop_after is not None and step - start >= stop_after:
            break
        with explain_timeout(f"RL step {step + 1}"):
            m = rl_step(run, step)
        last = step + 1
        if _wants_eval(cfg, last):
            m.update(validate(run))
        history.append({"step": last, **m})
        metrics.update(m)
        metrics.update(checkpoint_metrics(output))
        if last % cfg.train.log_every == 0 or last == cfg.train.steps:
            logger.log(last, metrics.pop(), show=("reward/total", "rollout/format_rate", "rollout/accuracy"))
        periodic = bool(cfg.train.save_every and last % cfg.train.save_every == 0 and last < cfg.train.steps)
        if periodic:
            _save_state(run, last)
        if last < cfg.train.steps:
            stop_if_preempted(stop, cfg, grid, output, last, lambda: _save_state(run, last), saved=periodic)  # noqa: B023
    if last == cfg.train.steps and last > start:     # resumed at the end: `latest` holds this state
        _save_state(run, last)
    finish_uploads(output, cfg, grid)      # the final report names a checkpoint that is in S3, not still uploading
    logger.close()
    run.counter.close()
    ckpt = latest_checkpoint(output)
    return {"steps": last, "start_step": start, "seconds": time.perf_counter() - t0, "history": history,
            "vision_passes": run.source.vision_passes, "records": len(run.records),
            "checkpoint": str(ckpt) if ckpt else None}


def _save_state(run: RLRun, step: int) -> None:
    save_step(run.output, step, run.model, run.tokenizer, run.processor, run.optimizer, run.scheduler, run.cfg,
              run.grid)
