"""What the SFT and RL loops share: start-up (policy, data, features, optionally a checkpoint to resume
from), the optimizer step, autocast, resume and save."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lvr_trainer.config import TrainerConfig
from lvr_trainer.data.schema import VideoQARecord
from lvr_trainer.model.loading import weights_digest
from lvr_trainer.parallel.grid import ProcessGrid
from lvr_trainer.parallel.sp_forward import reduce_gradients
from lvr_trainer.train.checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint, set_rng_state
from lvr_trainer.train.distributed import clip_grad_norm, full_states, load_full_states, setup_grid
from lvr_trainer.train.features import VideoFeatureSource
from lvr_trainer.train.remote import is_remote, local_output_dir, pull_latest, push_checkpoint
from lvr_trainer.train.setup import UnreadableVideos, load_policy, load_split, make_feature_source


@dataclass
class RunStart:
    """A loop's starting state: the grid, the policy and its data, and the checkpoint to resume from."""

    grid: ProcessGrid
    device: torch.device
    output: Path
    checkpoint: Path | None
    model: torch.nn.Module
    tokenizer: object
    processor: object
    records: list[VideoQARecord]
    source: VideoFeatureSource
    unreadable: UnreadableVideos
    initial_weights: str | None = None   # weights_digest of a fresh start's model (rank 0); None on resume


def start_run(cfg: TrainerConfig, resume: bool) -> RunStart:
    """Threads, grid, policy (the latest checkpoint's weights when resuming), train split, features."""
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    grid = setup_grid(cfg.parallel)
    device = torch.device(grid.device)
    output = local_output_dir(cfg.output.dir)
    if resume and is_remote(cfg.output.dir) and grid.rank == 0:
        pull_latest(cfg.output.dir, output)
    if resume and torch.distributed.is_initialized():
        torch.distributed.barrier()
    ckpt = latest_checkpoint(output) if resume else None
    model, tokenizer, processor = load_policy(cfg.model, device, from_dir=ckpt / "model" if ckpt else None)
    model.train()
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    initial = weights_digest(model) if ckpt is None and grid.rank == 0 else None
    records, base_dir = load_split(cfg.data.train, cfg.data.max_bad_row_fraction, cfg.data.video_root)
    # MR-SP stage 1: ranks of one SP group hold the same samples, so they encode each video together.
    source = make_feature_source(model, processor, cfg, base_dir, grid.sp_group if grid.sp_size > 1 else None)
    unreadable = UnreadableVideos(len(records), cfg.data.max_bad_row_fraction)
    return RunStart(grid, device, output, ckpt, model, tokenizer, processor, records, source, unreadable, initial)


def autocast_for(cfg: TrainerConfig, device: torch.device):
    """bf16 autocast on GPUs that support it (and when `train.bf16`); a no-op context elsewhere."""
    bf16 = cfg.train.bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def finish_step(model, optimizer, scheduler, grid: ProcessGrid, cfg: TrainerConfig) -> float:
    """Reduce gradients over ranks, clip, AdamW step, schedule step; returns the pre-clip grad norm."""
    reduce_gradients(model, grid)
    norm = clip_grad_norm(model, cfg.optim.grad_clip, grid)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def resume_from(checkpoint: Path, model, optimizer, scheduler, cfg: TrainerConfig, grid: ProcessGrid) -> int:
    """Load optimizer, schedule and RNG state of `checkpoint` (its weights are already loaded); its step."""
    state = load_trainer_state(checkpoint)
    load_full_states(model, optimizer, None, state["optimizer"], cfg.parallel, grid)
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return int(state["step"])


def save_step(output: Path, step: int, model, tokenizer, processor, optimizer, scheduler, cfg: TrainerConfig,
              grid: ProcessGrid) -> None:
    """Checkpoint `step` from rank 0 (full states gathered first under FSDP), uploaded when the output is
    s3://; all ranks then wait."""
    model_state, optim_state = full_states(model, optimizer, cfg.parallel, grid)
    if grid.rank == 0:
        save_checkpoint(output, step, model, tokenizer, processor, optimizer, scheduler, {}, model_state, optim_state)
        if is_remote(cfg.output.dir):
            push_checkpoint(cfg.output.dir, output, step)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
