"""What the SFT and RL loops share: start-up (policy, data, features, optionally a checkpoint to resume
from), the optimizer step, autocast, resume and save."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lvr_trainer.config import ConfigError, Precision, TrainerConfig
from lvr_trainer.data.schema import VideoQARecord
from lvr_trainer.layout import MODEL_DIR
from lvr_trainer.model.loading import inference_dtype, once_per_node, vision_tower, weights_digest
from lvr_trainer.parallel.grid import ProcessGrid
from lvr_trainer.parallel.sp_forward import reduce_gradients
from lvr_trainer.train.checkpoint import (latest_checkpoint, load_trainer_state, prune_checkpoints, save_checkpoint,
                                          set_rng_state)
from lvr_trainer.train.distributed import (barrier, clip_grad_norm, distribute_weights, explain_timeout, full_states,
                                           load_full_states, setup_grid)
from lvr_trainer.train import heartbeat
from lvr_trainer.train.features import VideoFeatureSource
from lvr_trainer.train.remote import (CheckpointUploader, CheckpointUploadError, is_remote, local_output_dir,
                                      pull_latest)
from lvr_trainer.train.preemption import Preempted, StopOnSigterm
from lvr_trainer.train.setup import UnreadableVideos, load_policy, load_split, make_feature_source
from lvr_trainer.parallel import collectives

# Rank 0's background uploader per local output directory (one run at a time writes there).
_UPLOADERS: dict[Path, CheckpointUploader] = {}


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
    """Threads, grid, policy (the latest checkpoint's weights when resuming), train split, features.

    The policy comes back ready for data parallelism: float32 weights read by rank 0 alone and shared
    with the others (`distribute_weights`), sharded under FSDP with the precision's policy."""
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    grid = setup_grid(cfg.parallel)
    device = torch.device(grid.device)
    check_precision(cfg, device)
    output = local_output_dir(cfg.output.dir)
    _forget_uploader(output)    # an earlier run in this process (tests) may still be uploading here
    ckpt = resume_point(cfg, output) if resume else None
    model, tokenizer, processor = load_trained_policy(cfg, grid, ckpt)
    model.train()
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    initial = weights_digest(model) if ckpt is None and grid.rank == 0 else None
    model = distribute_weights(model, cfg.parallel, grid, cfg.train.precision)
    records, base_dir = load_split(cfg.data.train, cfg.data.max_bad_row_fraction, cfg.data.video_root)
    # MR-SP stage 1: ranks of one SP group hold the same samples, so they encode each video together.
    source = make_feature_source(model, processor, cfg, base_dir, grid.sp_group if grid.sp_size > 1 else None)
    unreadable = UnreadableVideos(len(records), cfg.data.max_bad_row_fraction)
    return RunStart(grid, device, output, ckpt, model, tokenizer, processor, records, source, unreadable, initial)


def resume_point(cfg: TrainerConfig, output: Path) -> Path | None:
    """The checkpoint to resume from, present on every node: for an s3:// output the first rank of each
    node pulls it into that node's staging directory while the node's other ranks wait."""
    if is_remote(cfg.output.dir):
        with explain_timeout("pulling the checkpoint to resume from"):
            once_per_node(lambda: pull_latest(cfg.output.dir, output),
                          f"pulling the latest checkpoint of {cfg.output.dir}")
    return latest_checkpoint(output)


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


def check_precision(cfg: TrainerConfig, device: torch.device) -> None:
    """bf16-mixed needs bf16 kernels: any CPU, GPUs from Ampere on."""
    if (cfg.train.precision == Precision.bf16_mixed and device.type == "cuda"
            and not torch.cuda.is_bf16_supported()):
        raise ConfigError(f"train.precision bf16-mixed: {torch.cuda.get_device_name(device)} has no bf16 support "
                          "(it needs an Ampere or newer GPU); set train.precision: fp32")


def autocast_for(cfg: TrainerConfig, device: torch.device):
    """bf16 autocast under train.precision bf16-mixed (on CPU as on GPU), a no-op context under fp32.
    The weights it computes with stay float32; see `distributed.wrap_model` for the FSDP side."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.precision == Precision.bf16_mixed)


def finish_step(model, optimizer, scheduler, grid: ProcessGrid, cfg: TrainerConfig) -> float:
    """Reduce gradients over ranks, clip, AdamW step, schedule step; returns the pre-clip grad norm."""
    with explain_timeout("reducing gradients"):
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
    """Checkpoint `step`: full states gathered (collective under FSDP), written by rank 0, checkpoints
    beyond `train.keep_last` deleted. An s3:// output is uploaded in the background while training goes
    on (`CheckpointUploader`); the next save, and the last step's save, wait for it, and a checkpoint that
    could not be uploaded stops the run on every rank with the reason."""
    remote = is_remote(cfg.output.dir)
    if remote:
        _raise_upload_failure(output, grid)
    with explain_timeout("gathering the checkpoint"):
        model_state, optim_state = full_states(model, optimizer, cfg.parallel, grid)
    if grid.rank == 0:
        save_checkpoint(output, step, model, tokenizer, processor, optimizer, scheduler, {}, model_state, optim_state)
        prune_checkpoints(output, cfg.train.keep_last)
        if remote:
            _uploader(output, cfg).start(step)
    if remote and step >= cfg.train.steps:
        _raise_upload_failure(output, grid)
    else:
        barrier("saving a checkpoint (rank 0 writes it while the others wait)")


def _uploader(output: Path, cfg: TrainerConfig) -> CheckpointUploader:
    if output not in _UPLOADERS:
        _UPLOADERS[output] = CheckpointUploader(cfg.output.dir, output, cfg.train.keep_last)
    return _UPLOADERS[output]


def _raise_upload_failure(output: Path, grid: ProcessGrid) -> None:
    """Rank 0 waits for its upload in flight; if it was given up on, every rank raises (rank 0 the
    reason, the others a pointer to it), so none is left waiting in a collective."""
    error = None
    if grid.rank == 0 and output in _UPLOADERS:
        try:
            _UPLOADERS[output].wait()
        except CheckpointUploadError as err:
            error = err
    if grid.layout.world_size > 1:
        flag = collectives.group_tensor([0 if error is None else 1])
        with explain_timeout("waiting for rank 0's checkpoint upload"):
            collectives.broadcast(flag, src=0)
        if error is None and int(flag.item()):
            raise CheckpointUploadError("rank 0 could not upload a checkpoint to output.dir; its log has the reason")
    if error is not None:
        raise error


def finish_uploads(output: Path) -> None:
    """Wait for this output's checkpoint upload in flight (rank 0; a no-op elsewhere and for local
    outputs); raises CheckpointUploadError if it was given up on. The loops call it before returning, so
    a run that stops early (`stop_after`, tests) has its last checkpoint in S3 too."""
    uploader = _UPLOADERS.get(output)
    if uploader is not None:
        uploader.wait()


def _forget_uploader(output: Path) -> None:
    """Let an earlier run's upload to `output` finish, and start counting afresh. Its failure, if any,
    was that run's to report (it stopped with it), not this one's."""
    uploader = _UPLOADERS.pop(output, None)
    if uploader is not None:
        try:
            uploader.wait()
        except CheckpointUploadError:
            pass


def stop_if_preempted(stop: StopOnSigterm, grid: ProcessGrid, output: Path, step: int, save, saved: bool) -> None:
    """At a step boundary, when any rank got SIGTERM: checkpoint `step` with `save()` (unless this step was
    just saved), wait for its upload, and raise `Preempted` (the CLI exits with EXIT_PREEMPTED)."""
    with explain_timeout(f"the end of step {step} (asking every rank whether it got SIGTERM)"):
        heartbeat.publish("step_end")
        requested = stop.requested(grid)
    if not requested:
        return
    if not saved:
        save()
    finish_uploads(output)
    ckpt = latest_checkpoint(output)
    raise Preempted(step, str(ckpt) if ckpt else None)


def checkpoint_metrics(output: Path) -> dict[str, float]:
    """`checkpoint/*` counters of this output's uploads (rank 0 of an s3:// run; empty otherwise)."""
    uploader = _UPLOADERS.get(output)
    return uploader.stats.metrics() if uploader is not None else {}
