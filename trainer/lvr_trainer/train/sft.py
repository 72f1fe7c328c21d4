"""Stage 1: chain-of-thought SFT on LongVideo-Reason records (`lvr sft --config FILE`).

One optimizer step, top to bottom:
    global batch of record indices (a pure function of seed and step) -> this rank's micro-batches
    -> examples (prompt with cached video embeddings spliced in + target, loss only on the target)
    -> log-probs by (sequence-parallel) prefill -> loss = -sum(log p) / (target tokens in the whole step)
    -> backward per micro-batch -> gradients reduced over ranks -> clip -> AdamW -> schedule
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from lvr_trainer.config import TrainerConfig
from lvr_trainer.data.schema import VideoQARecord
from lvr_trainer.model.loading import vision_tower
from lvr_trainer.parallel import heartbeat
from lvr_trainer.parallel.collectives import all_reduce_sum
from lvr_trainer.parallel.data_parallel import wrap_model
from lvr_trainer.parallel.grid import ProcessGrid
from lvr_trainer.parallel.timeouts import explain_timeout
from lvr_trainer.train.batch_sampling import global_indices, rank_micro_batches
from lvr_trainer.train.checkpoint import latest_checkpoint
from lvr_trainer.inputs.examples import IGNORE, Batch, Example, build_example, collate, sft_target
from lvr_trainer.train.metrics import Metrics, RunLogger
from lvr_trainer.train.optim import build_optimizer, finish_step
from lvr_trainer.train.checkpoint_resume import resume_from
from lvr_trainer.train.checkpoint_save import checkpoint_metrics, finish_uploads, save_step, stop_if_preempted
from lvr_trainer.train.logprobs import response_logprobs
from lvr_trainer.train.precision import autocast_for
from lvr_trainer.train.preemption import StopOnSigterm
from lvr_trainer.train.run_start import start_run


@dataclass
class ExampleBank:
    """Examples built once per record (the prompt, target and positions never change in SFT)."""

    model: object
    tokenizer: object
    records: list[VideoQARecord]
    source: object
    think: bool
    built: dict[int, Example] = field(default_factory=dict)

    def __getitem__(self, i: int) -> Example:
        if i not in self.built:
            r = self.records[i]
            self.built[i] = build_example(self.model, self.tokenizer, r, self.source(r), sft_target(r, self.think),
                                          self.think)
        return self.built[i]


def sft_step(model, bank: ExampleBank, micro: list[list[int]], grid: ProcessGrid, cfg: TrainerConfig,
             device: torch.device) -> dict[str, float]:
    """Forward/backward over this rank's micro-batches; returns the step's loss (mean over every target
    token of the step, all DP ranks) and that token count."""
    pad_id = bank.tokenizer.pad_token_id
    local_tokens = sum(int((bank[i].labels != IGNORE).sum()) for mb in micro for i in mb)
    total_tokens = all_reduce_sum(local_tokens, device, grid.dp_group) if grid.dp_size > 1 else float(local_tokens)
    loss_sum = 0.0
    for mb in micro:
        batch = collate([bank[i] for i in mb], pad_id).to(device)
        mask = (batch.target_ids != IGNORE).float()
        with autocast_for(cfg, device):
            logprobs = response_logprobs(model, batch, grid)
        nll = -(logprobs * mask).sum()
        # DP ranks average gradients, so scale by dp_size: the step's loss is the mean over all its tokens.
        (nll * grid.dp_size / total_tokens).backward()
        loss_sum += float(nll.detach())
    if grid.dp_size > 1:
        loss_sum = all_reduce_sum(loss_sum, device, grid.dp_group)
    return {"train/loss": loss_sum / total_tokens, "train/tokens": total_tokens}


def run_sft(cfg: TrainerConfig, resume: bool = False, stop_after: int | None = None,
            stop: StopOnSigterm | None = None) -> dict:
    """Train; returns a summary. `resume` continues from `output.dir`'s latest checkpoint.
    `stop_after` ends the run early after that many steps (as a crash would), for tests. `stop`: SIGTERM
    ends the run at the next step boundary with a checkpoint (raises `Preempted`)."""
    stop = stop or StopOnSigterm()
    run = start_run(cfg, resume, "sft")
    grid, device, output = run.grid, run.device, run.output
    model, tokenizer, processor, records, source = run.model, run.tokenizer, run.processor, run.records, run.source
    bank = ExampleBank(model, tokenizer, records, source, cfg.sft.think)
    model = wrap_model(model, cfg.parallel, grid, keep_whole=vision_tower(model))
    optimizer, scheduler = build_optimizer(model, cfg.optim, cfg.train.steps)
    start = resume_from(run.checkpoint, model, optimizer, scheduler, cfg, grid) if run.checkpoint else 0
    rank0 = grid.rank == 0
    logger = RunLogger(output, cfg.train.steps, "sft", cfg.output.tensorboard, rank0, start,
                       output_uri=cfg.output.dir, initial_weights=run.initial_weights)
    metrics, t0 = Metrics(), time.perf_counter()
    global_batch = cfg.train.batch_size * cfg.train.grad_accum * grid.dp_size
    losses: list[float] = []
    last = start
    for step in range(start, cfg.train.steps):
        if stop_after is not None and step - start >= stop_after:
            break
        t_step = time.perf_counter()
        indices = global_indices(len(records), cfg.train.seed, step, global_batch)
        micro = rank_micro_batches(indices, cfg.train.batch_size, cfg.train.grad_accum, grid.dp_size, grid.dp_rank)
        with explain_timeout(f"SFT step {step + 1}"):
            heartbeat.publish("features", step + 1)
            micro = [run.unreadable.substitute(mb, records, source) for mb in micro]
            heartbeat.publish("forward_backward")
            m = sft_step(model, bank, micro, grid, cfg, device)
            heartbeat.publish("optimizer_step")
            grad_norm = finish_step(model, optimizer, scheduler, grid, cfg)
        loss, tokens = m["train/loss"], m["train/tokens"]
        losses.append(loss)
        last = step + 1
        elapsed = time.perf_counter() - t_step
        metrics.update({"train/loss": loss, "train/grad_norm": grad_norm, "train/lr": scheduler.get_last_lr()[0],
                        "data/unreadable_videos": len(run.unreadable.bad), **checkpoint_metrics(output),
                        "perf/target_tokens_per_s": tokens / elapsed, "time/step_s": elapsed})
        if last % cfg.train.log_every == 0 or last == cfg.train.steps:
            logger.log(last, metrics.pop(), show=("train/loss", "perf/target_tokens_per_s"))
        save = lambda: save_step(output, last, model, tokenizer, processor, optimizer, scheduler, cfg, grid)  # noqa: E731,B023
        periodic = bool(cfg.train.save_every and last % cfg.train.save_every == 0 and last < cfg.train.steps)
        if periodic:
            save()
        if last < cfg.train.steps:
            stop_if_preempted(stop, cfg, grid, output, last, save, saved=periodic)
    if last == cfg.train.steps and last > start:     # resumed at the end: `latest` holds this state
        save_step(output, last, model, tokenizer, processor, optimizer, scheduler, cfg, grid)
    finish_uploads(output, cfg, grid)      # the final report names a checkpoint that is in S3, not still uploading
    logger.close()
    return {"steps": last, "start_step": start, "losses": losses, "seconds": time.perf_counter() - t0,
            "vision_passes": source.vision_passes, "records": len(records),
            "checkpoint": str(latest_checkpoint(output)) if latest_checkpoint(output) else None}


