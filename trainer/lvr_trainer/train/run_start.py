"""How a training run starts, for both loops: threads, the process grid, the memory plan, the policy (a
checkpoint's weights when resuming) shared by rank 0, the train split and its features."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lvr_trainer.config import TrainerConfig
from lvr_trainer.data.schema import VideoQARecord
from lvr_trainer.data.split import load_split
from lvr_trainer.inputs.features import VideoFeatureSource, make_feature_source
from lvr_trainer.layout import MODEL_DIR
from lvr_trainer.model.loading import (files_digest, inference_dtype, load_policy, local_model_dir, vision_tower,
                                       weights_digest)
from lvr_trainer.parallel.data_parallel import distribute_weights
from lvr_trainer.parallel.grid import ProcessGrid
from lvr_trainer.parallel.timeouts import explain_timeout
from lvr_trainer.parallel.world import setup_grid
from lvr_trainer.plan import checkpointing_by_default
from lvr_trainer.planning import preflight
from lvr_trainer.train.checkpoint_resume import resume_point
from lvr_trainer.train.checkpoint_save import forget_uploader
from lvr_trainer.train.checkpoint_upload import local_output_dir
from lvr_trainer.train.ownership import claim_output, job_identity
from lvr_trainer.train.precision import check_precision
from lvr_trainer.train.unreadable_videos import UnreadableVideos


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
    initial_weights: str | None = None   # initial_digest of a fresh start's model (rank 0); None on resume


def check_memory_plan(cfg: TrainerConfig, stage: str, grid) -> None:
    """Before any weight loads: the run's memory plan on its GPUs (`lvr plan`); DoesNotFit (exit 3, the plan's
    verdict in the pod's termination message) when it exceeds them, a warning under memory_check: warn."""
    plan = preflight(cfg, stage, grid.layout.world_size,
                     int(os.environ.get("LOCAL_WORLD_SIZE", grid.layout.world_size)))
    if not plan.fits:
        logging.getLogger("lvr").warning("the memory plan needs %.1f GiB per GPU of %.1f (parallel.memory_check: "
                                         "warn): starting anyway", plan.total / 2**30, plan.gpu_bytes / 2**30)


def start_run(cfg: TrainerConfig, resume: bool, stage: str = "sft") -> RunStart:
    """Threads, grid, policy (the latest checkpoint's weights when resuming), train split, features.

    The policy comes back ready for data parallelism: float32 weights read by rank 0 alone and shared
    with the others (`distribute_weights`), sharded under FSDP with the precision's policy."""
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    grid = setup_grid(cfg.parallel)
    device = torch.device(grid.device)
    check_precision(cfg, device)
    if device.type == "cuda" and cfg.parallel.memory_check != "off":
        check_memory_plan(cfg, stage, grid)
    output = local_output_dir(cfg.output.dir)
    forget_uploader(output)    # an earlier run in this process (tests) may still be uploading here
    if grid.rank == 0 and (job := job_identity()) is not None:
        claim_output(cfg.output.dir, job)      # another job's checkpoints are neither resumed nor pruned
    ckpt = resume_point(cfg, output) if resume else None
    model, tokenizer, processor = load_trained_policy(cfg, grid, ckpt)
    model.train()
    if wants_activation_checkpointing(cfg, model):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    initial = initial_digest(cfg, model) if ckpt is None and grid.rank == 0 else None
    model = distribute_weights(model, cfg.parallel, grid, cfg.train.precision, keep_whole=vision_tower(model))
    records, base_dir = load_split(cfg.data.train, cfg.data.max_bad_row_fraction, cfg.data.video_root)
    # MR-SP stage 1: ranks of one SP group hold the same samples, so they encode each video together.
    source = make_feature_source(model, processor, cfg, base_dir, grid.sp_group if grid.sp_size > 1 else None)
    unreadable = UnreadableVideos(len(records), cfg.data.max_bad_row_fraction)
    return RunStart(grid, device, output, ckpt, model, tokenizer, processor, records, source, unreadable, initial)


def initial_digest(cfg: TrainerConfig, model) -> str:
    """What the run starts from: the digest of model.path's weight files, or for a preset (random init, no
    files) of the weights in memory."""
    return files_digest(local_model_dir(cfg.model.path)) if cfg.model.path else weights_digest(model)


def wants_activation_checkpointing(cfg: TrainerConfig, model) -> bool:
    """`train.gradient_checkpointing`, or when unset: on for a language model larger than the `small` preset's."""
    if cfg.train.gradient_checkpointing is not None:
        return cfg.train.gradient_checkpointing
    text = getattr(model.config, "text_config", model.config)
    return checkpointing_by_default(text.hidden_size, text.num_hidden_layers)


def load_trained_policy(cfg: TrainerConfig, grid: ProcessGrid, ckpt: Path | None):
    """(model, tokenizer, processor) with float32 weights to train (the master copy under every
    precision) and the frozen vision tower in `model.dtype` (what `lvr encode` caches with, and no
    optimizer state to keep). Rank 0 reads the weights; in a multi-rank run the others get a meta-device
    skeleton for `distribute_weights`, so no rank but one holds a second full copy."""
    trained = cfg.model.model_copy(update={"dtype": "float32"})
    leader = grid.rank == 0 or grid.layout.world_size == 1
    device = torch.device(grid.device if leader else "meta")
    with explain_timeout("loading the model"):
        model, tokenizer, processor = load_policy(trained, device, from_dir=ckpt / MODEL_DIR if ckpt else None)
    if cfg.model.freeze_vision:
        vision_tower(model).to(inference_dtype(cfg.model, grid.device))
    return model, tokenizer, processor
