"""Stage 2: GRPO reinforcement learning from cached video embeddings (`lvr rl --config FILE`).

One RL step, top to bottom (DESIGN.md, "Data flow of one RL step"):
    global batch of P prompts (a pure function of seed and step) -> this rank's share
    -> features: vision tower at most once per distinct video (then memory / embedding cache)
    -> rollout: G sampled replies per prompt from [text embeds + cached video embeds] (under sequence
       parallelism sampled on each SP group's first rank and broadcast to its peers)
    -> reward: weighted terms of `rl.rewards` -> group-normalised advantages
    -> old log-probs (policy) and reference log-probs (frozen initial policy; skipped when kl_coef = 0)
       by prefill over prompt + reply tokens, reusing the cached embeddings (no vision pass)
    -> update: rl.ppo_epochs x rl.mini_batches optimizer steps of policy_loss + kl_coef * kl_loss
    -> metrics (reward/*, rollout/*, actor/*, cache/*, time/*), checkpoint, periodic validation.

Sizes: a rank's rollout batch is train.batch_size x train.grad_accum prompts; a micro-batch (one
forward/backward) is train.batch_size prompts x G replies; a mini-batch (one optimizer step) is
train.grad_accum / rl.mini_batches micro-batches.
"""

from __future__ import annotations

import contextlib
import time

import torch

from lvr_trainer.config import TrainerConfig
from lvr_trainer.model.loading import vision_tower
from lvr_trainer.train.checkpoint import latest_checkpoint
from lvr_trainer.train.distributed import wrap_model
from lvr_trainer.train.metrics import Metrics, RunLogger
from lvr_trainer.train.optim import build_optimizer
from lvr_trainer.train.rl_rollout import (micro_batches, make_engine, reply_examples, reward_from_config,
                                          sample_for_sp_group, sampling_params, score_groups)
from lvr_trainer.train.rl_update import ppo_update, prefill_logprobs, prefill_metrics
from lvr_trainer.train.validation import validate_on_all_ranks
from lvr_trainer.train.setup import load_policy, load_split, make_feature_source
from lvr_trainer.train.loop import (autocast_for, checkpoint_metrics, finish_step, finish_uploads, resume_from,
                                   save_step, start_run)
from lvr_trainer.train.sft import global_indices, rank_micro_batches


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
    """`with timer("rollout"):` adds the seconds to `time/rollout`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        yield
        self.seconds[f"time/{phase}"] = self.seconds.get(f"time/{phase}", 0.0) + time.perf_counter() - t0


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


def load_reference(cfg: TrainerConfig, device: torch.device):
    """The frozen reference policy: the run's initial model (cfg.model, also after a resume), or None
    when rl.kl_coef is 0."""
    if cfg.rl.kl_coef == 0:
        return None
    ref, _, _ = load_policy(cfg.model, device)
    ref.eval().requires_grad_(False)
    return ref


def rl_step(state: dict, step: int) -> dict[str, float]:
    """One GRPO step on this rank; returns its metrics. `state` holds the run's objects (`_setup`)."""
    cfg, grid, model, tokenizer, source = (state[k] for k in ("cfg", "grid", "model", "tokenizer", "source"))
    rl, g, timer = cfg.rl, cfg.rl.group_size, PhaseTimer()
    global_batch = cfg.train.batch_size * cfg.train.grad_accum * grid.dp_size
    indices = global_indices(len(state["records"]), cfg.train.seed, step, global_batch)
    mine = [i for mb in rank_micro_batches(indices, cfg.train.batch_size, cfg.train.grad_accum, grid.dp_size,
                                           grid.dp_rank) for i in mb]
    passes0, calls0 = source.vision_passes, state["counter"].calls
    with timer("features"):       # every video's features, unreadable ones replaced (see UnreadableVideos)
        mine = state["unreadable"].substitute(mine, state["records"], source)
    records = [state["records"][i] for i in mine]
    with timer("weight_sync"):    # an engine with its own copy (vLLM, a sidecar) gets the updated policy
        state["engine"].sync_weights(model)
    with timer("rollout"), state["autocast"]():     # the same precision as the prefill that scores it
        params = sampling_params(rl, cfg.train.seed + 7919 * grid.dp_rank, step)
        rollouts = sample_for_sp_group(state["engine"], model, tokenizer, records, source, params, cfg.sft.think,
                                       grid)
    with timer("reward"):
        scored = score_groups(state["reward"], rl, records, rollouts)
    with timer("old_logprobs"):
        examples = reply_examples(model, tokenizer, records, rollouts, source, cfg.sft.think, g)
        micros = micro_batches(examples, rollouts, scored.advantages, cfg.train.batch_size * g,
                               tokenizer.pad_token_id, state["device"])
        prefill_logprobs(model, micros, grid, rl.temperature, "old_logprobs", state["autocast"])
    if state["reference"] is not None:
        with timer("ref_logprobs"):
            prefill_logprobs(state["reference"], micros, grid, rl.temperature, "ref_logprobs", state["autocast"])
    with timer("update"):
        finish = lambda: finish_step(model, state["optimizer"], state["scheduler"], grid, cfg)  # noqa: E731
        update = ppo_update(model, micros, rl, grid, finish, state["autocast"], state["device"])
    out = {**scored.metrics, **prefill_metrics(micros), **update, **timer.seconds,
           "cache/vision_passes": float(source.vision_passes - passes0),
           "cache/vision_calls": float(state["counter"].calls - calls0),
           "cache/videos": float(len({r.video for r in records})),
           "data/unreadable_videos": float(len(state["unreadable"].bad)),
           "actor/lr": state["scheduler"].get_last_lr()[0]}
    out["time/step"] = sum(timer.seconds.values())
    return out


def _setup(cfg: TrainerConfig, resume: bool) -> dict:
    """Load policy (or the latest checkpoint's), reference, data, features, engine, optimizer; resume."""
    check_rl_config(cfg)
    run = start_run(cfg, resume)
    grid, device, output = run.grid, run.device, run.output
    model, tokenizer, processor, records, source = run.model, run.tokenizer, run.processor, run.records, run.source
    reference = load_reference(cfg, device)
    engine = make_engine(cfg.rollout, model, tokenizer, cfg.train.batch_size * cfg.rl.group_size, cfg.train.seed)
    counter = VisionCounter(model, reference)
    model = wrap_model(model, cfg.parallel, grid)
    total_updates = cfg.train.steps * cfg.rl.ppo_epochs * cfg.rl.mini_batches
    optimizer, scheduler = build_optimizer(model, cfg.optim, total_updates)
    start = resume_from(run.checkpoint, model, optimizer, scheduler, cfg, grid) if run.checkpoint else 0
    return dict(cfg=cfg, grid=grid, device=device, output=output, model=model, tokenizer=tokenizer,
                initial_weights=run.initial_weights, unreadable=run.unreadable,
                processor=processor, reference=reference, records=records, source=source, engine=engine,
                counter=counter, optimizer=optimizer, scheduler=scheduler, start=start,
                reward=reward_from_config(cfg.rl), autocast=lambda: autocast_for(cfg, device))


def validate(state: dict) -> dict[str, float]:
    """Greedy strict accuracy and format rate on `data.val`, with `lvr eval`'s scorer, every rank scoring
    its share (train/validation.py: a rank that generated alone would hang the others under FSDP)."""
    cfg = state["cfg"]
    if "val" not in state:
        records, base_dir = load_split(cfg.data.val, cfg.data.max_bad_row_fraction, cfg.data.video_root)
        state["val"] = (records, make_feature_source(state["model"], state["processor"], cfg, base_dir))
    records, source = state["val"]
    return validate_on_all_ranks(state["model"], state["tokenizer"], records, source, cfg.eval, state["device"])


def _wants_eval(cfg: TrainerConfig, step: int) -> bool:
    return bool(cfg.data.val and cfg.train.eval_every and step % cfg.train.eval_every == 0)


def run_rl(cfg: TrainerConfig, resume: bool = False, stop_after: int | None = None) -> dict:
    """Train with GRPO; returns a summary (per-step metrics in `history`). `resume` continues from
    `output.dir`'s latest checkpoint; `stop_after` ends the run after that many steps (tests)."""
    state = _setup(cfg, resume)
    try:
        return _train(state, cfg, stop_after)
    finally:
        if hasattr(state["engine"], "shutdown"):    # a sidecar on a Kubernetes without native sidecars
            state["engine"].shutdown()              # keeps the pod running until it exits


def _train(state: dict, cfg: TrainerConfig, stop_after: int | None) -> dict:
    start, grid, output = state["start"], state["grid"], state["output"]
    rank0 = grid.rank == 0
    logger = RunLogger(output, cfg.train.steps, "rl", cfg.output.tensorboard, rank0, start,
                       output_uri=cfg.output.dir, initial_weights=state["initial_weights"])
    metrics, history, t0, last = Metrics(), [], time.perf_counter(), start
    if start == 0 and _wants_eval(cfg, 0):
        logger.log(0, validate(state))
    for step in range(start, cfg.train.steps):
        if stop_after is not None and step - start >= stop_after:
            break
        m = rl_step(state, step)
        last = step + 1
        if _wants_eval(cfg, last):
            m.update(validate(state))
        history.append({"step": last, **m})
        metrics.update(m)
        metrics.update(checkpoint_metrics(output))
        if last % cfg.train.log_every == 0 or last == cfg.train.steps:
            logger.log(last, metrics.pop(), show=("reward/total", "rollout/format_rate", "rollout/accuracy"))
        if cfg.train.save_every and last % cfg.train.save_every == 0 and last < cfg.train.steps:
            _save_state(state, last)
    if last == cfg.train.steps:
        _save_state(state, last)
    finish_uploads(output)      # the final report names a checkpoint that is in S3, not still uploading
    logger.close()
    state["counter"].close()
    ckpt = latest_checkpoint(output)
    return {"steps": last, "start_step": start, "seconds": time.perf_counter() - t0, "history": history,
            "vision_passes": state["source"].vision_passes, "records": len(state["records"]),
            "checkpoint": str(ckpt) if ckpt else None}


def _save_state(state: dict, step: int) -> None:
    save_step(state["output"], step, state["model"], state["tokenizer"], state["processor"], state["optimizer"],
          state["scheduler"], state["cfg"], state["grid"])
