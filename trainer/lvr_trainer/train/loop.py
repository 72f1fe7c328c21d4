"""What the SFT and RL loops share: start-up (policy, data, features, optionally a checkpoint to resume
from), the optimizer step, autocast, resume and save."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from lvr_trainer.config import ConfigError, Precision, TrainerConfig
from lvr_trainer.data.schema import VideoQARecord
from lvr_trainer.layout import MODEL_DIR, SHARDED_STATE, TRAINER_STATE
from lvr_trainer.model.loading import (files_digest, inference_dtype, local_model_dir, once_per_node, vision_tower,
                                       weights_digest)
from lvr_trainer.parallel.grid import ProcessGrid
from lvr_trainer.plan import checkpointing_by_default
from lvr_trainer.parallel.sp_forward import reduce_gradients
from lvr_trainer.train.checkpoint import (latest_checkpoint, load_trainer_state, mark_latest, prune_checkpoints,
                                          rng_state, save_checkpoint, set_rng_state, step_dir)
from lvr_trainer.train.distributed import (barrier, clip_grad_norm, distribute_weights, explain_timeout,
                                           is_fsdp, load_full_states, setup_grid)
from lvr_trainer.train.sharded_checkpoint import PendingSave, export_model_dir, load_sharded, save_sharded
from lvr_trainer.train import heartbeat
from lvr_trainer.inputs.features import VideoFeatureSource
from lvr_trainer.train.checkpoint_upload import (CheckpointUploader, CheckpointUploadError, NodeShare, is_remote,
                                      local_output_dir, pull_latest)
from lvr_trainer.train.ownership import claim_output, job_identity
from lvr_trainer.train.preemption import Preempted, StopOnSigterm
from lvr_trainer.train.setup import UnreadableVideos, load_policy, load_split, make_feature_source
from lvr_trainer.parallel import collectives

# Rank 0's background uploader per local output directory (one run at a time writes there).
_UPLOADERS: dict[Path, CheckpointUploader] = {}
# Every rank's sharded save in flight per local output directory (FSDP).
_PENDING: dict[Path, PendingSave] = {}


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
    import logging
    import os

    from lvr_trainer.planning import preflight

    plan = preflight(cfg, stage, grid.world_size, int(os.environ.get("LOCAL_WORLD_SIZE", grid.world_size)))
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
    _forget_uploader(output)    # an earlier run in this process (tests) may still be uploading here
    if grid.rank == 0 and (job := job_identity()) is not None:
        claim_output(cfg.output.dir, job)      # another job's checkpoints are neither resumed nor pruned
    ckpt = resume_point(cfg, output) if resume else None
    model, tokenizer, processor = load_trained_policy(cfg, grid, ckpt)
    model.train()
    if wants_activation_checkpointing(cfg, model):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    initial = initial_digest(cfg, model) if ckpt is None and grid.rank == 0 else None
    model = distribute_weights(model, cfg.parallel, grid, cfg.train.precision)
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
    """Load optimizer, schedule and RNG state of `checkpoint` (its weights are already loaded: exported ones;
    a sharded checkpoint's float32 master weights replace them here, resharded to this job's ranks); its step."""
    state = load_trainer_state(checkpoint)
    if (checkpoint / SHARDED_STATE).is_dir():
        with explain_timeout("loading the sharded checkpoint"):
            load_sharded(checkpoint / SHARDED_STATE, model, optimizer)
    elif "optimizer" in state:
        load_full_states(model, optimizer, None, state["optimizer"], cfg.parallel, grid)
    else:
        raise ConfigError(f"{checkpoint} holds no optimizer state (neither in {TRAINER_STATE} nor as "
                          f"{SHARDED_STATE}/ shards): it is incomplete; resume from an earlier checkpoint")
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return int(state["step"])


def save_step(output: Path, step: int, model, tokenizer, processor, optimizer, scheduler, cfg: TrainerConfig,
              grid: ProcessGrid) -> None:
    """Checkpoint `step`: the whole model and optimizer state written by rank 0 (ddp), checkpoints beyond
    `train.keep_last` deleted. An s3:// output is uploaded in the background while training goes
    on (`CheckpointUploader`); the next save, and the last step's save, wait for it, and a checkpoint that
    could not be uploaded stops the run on every rank with the reason. Under FSDP: `_save_sharded_step`."""
    if is_fsdp(cfg.parallel, grid):
        _save_sharded_step(output, step, model, tokenizer, processor, optimizer, scheduler, cfg, grid)
        return
    remote = is_remote(cfg.output.dir)
    if remote:
        _raise_upload_failure(output, grid)
    if grid.rank == 0:
        save_checkpoint(output, step, model, tokenizer, processor, optimizer, scheduler, {})
        prune_checkpoints(output, cfg.train.keep_last)
        if remote:
            _uploader(output, cfg).start(step)
    if remote and step >= cfg.train.steps:
        _raise_upload_failure(output, grid)
    else:
        barrier("saving a checkpoint (rank 0 writes it while the others wait)")


def _save_sharded_step(output: Path, step: int, model, tokenizer, processor, optimizer, scheduler,
                       cfg: TrainerConfig, grid: ProcessGrid) -> None:
    """Checkpoint `step` of an FSDP job: the model exported in the training dtype (rank 0 writes, one tensor
    gathered at a time), every rank's shards of the master weights and optimizer state written in the
    background (`sharded_checkpoint`). The previous save is finished first; the last step's save is finished
    before this returns."""
    finish_pending_save(output, cfg, grid)
    remote = is_remote(cfg.output.dir)
    if remote:
        _raise_upload_failure(output, grid)
    ckpt = step_dir(output, step)
    if grid.rank == 0 or (remote and _local_rank() == 0):     # s3://: every node stages its own shards
        shutil.rmtree(ckpt, ignore_errors=True)      # this step saved before the run was resumed behind it
    barrier("clearing the checkpoint directory")
    dtype = torch.bfloat16 if cfg.train.precision == Precision.bf16_mixed else torch.float32
    with explain_timeout("exporting the model (one tensor gathered at a time)"):
        export_model_dir(model, tokenizer, processor, ckpt / MODEL_DIR, dtype, write=grid.rank == 0)
    if grid.rank == 0:
        torch.save({"step": step, "scheduler": scheduler.state_dict(), "rng": rng_state()}, ckpt / TRAINER_STATE)
    with explain_timeout("starting the sharded checkpoint"):
        _PENDING[output] = save_sharded(ckpt / SHARDED_STATE, step, model, optimizer)
    if step >= cfg.train.steps:
        finish_pending_save(output, cfg, grid)


def finish_pending_save(output: Path, cfg: TrainerConfig, grid: ProcessGrid) -> None:
    """Wait for the sharded save in flight (every rank), then mark it `latest`, prune, and start its upload
    (rank 0). A no-op when none is in flight. Collective."""
    pending = _PENDING.pop(output, None)
    if pending is None:
        return
    with explain_timeout(f"writing the sharded checkpoint of step {pending.step}"):
        pending.wait()
    barrier("finishing the sharded checkpoint")
    remote = is_remote(cfg.output.dir)
    if grid.rank == 0:
        mark_latest(step_dir(output, pending.step))
        prune_checkpoints(output, cfg.train.keep_last)
        if remote:
            _uploader(output, cfg).start(pending.step)
    elif remote and _local_rank() == 0 and node_share().rank > 0:    # this node's shards, from its staging
        prune_checkpoints(output, cfg.train.keep_last)
        _uploader(output, cfg).start(pending.step)


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def node_share() -> NodeShare:
    """This process's node and the job's node count, from torchrun's environment (one node without it)."""
    world, per_node = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    rank = int(os.environ.get("GROUP_RANK", int(os.environ.get("RANK", "0")) // max(per_node, 1)))
    return NodeShare(rank=rank, count=max(1, world // max(per_node, 1)))


def _uploader(output: Path, cfg: TrainerConfig) -> CheckpointUploader:
    if output not in _UPLOADERS:
        _UPLOADERS[output] = CheckpointUploader(cfg.output.dir, output, cfg.train.keep_last, node=node_share())
    return _UPLOADERS[output]


def _raise_upload_failure(output: Path, grid: ProcessGrid) -> None:
    """The ranks that upload (rank 0; under FSDP on several nodes, each node's first rank) wait for their
    upload in flight; if one was given up on, every rank raises (the uploader the reason, the others a pointer
    to it), so none is left waiting in a collective."""
    error = None
    if output in _UPLOADERS:
        try:
            _UPLOADERS[output].wait()
        except CheckpointUploadError as err:
            error = err
    if grid.layout.world_size > 1:
        flag = collectives.group_tensor([0 if error is None else 1])
        with explain_timeout("waiting for the checkpoint uploads"):
            collectives.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if error is None and int(flag.item()):
            raise CheckpointUploadError("a rank could not upload a checkpoint to output.dir (rank 0, or a node's "
                                        "first rank for its shards); its log has the reason")
    if error is not None:
        raise error


def finish_uploads(output: Path, cfg: TrainerConfig, grid: ProcessGrid) -> None:
    """Finish a sharded save in flight (collective), then wait for this output's checkpoint upload (rank 0;
    a no-op elsewhere and for local outputs); raises CheckpointUploadError if it was given up on. The loops
    call it before returning, so a run that stops early (`stop_after`, tests) has its last checkpoint
    complete, and in S3 too."""
    finish_pending_save(output, cfg, grid)
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


def stop_if_preempted(stop: StopOnSigterm, cfg: TrainerConfig, grid: ProcessGrid, output: Path, step: int, save,
                      saved: bool) -> None:
    """At a step boundary, when any rank got SIGTERM: checkpoint `step` with `save()` (unless this step was
    just saved), wait for its upload, and raise `Preempted` (the CLI exits with EXIT_PREEMPTED)."""
    with explain_timeout(f"the end of step {step} (asking every rank whether it got SIGTERM)"):
        heartbeat.publish("step_end")
        requested = stop.requested(grid)
    if not requested:
        return
    if not saved:
        save()
    finish_uploads(output, cfg, grid)
    ckpt = latest_checkpoint(output)
    raise Preempted(step, str(ckpt) if ckpt else None)


def checkpoint_metrics(output: Path) -> dict[str, float]:
    """`checkpoint/*` counters of this output's uploads (rank 0 of an s3:// run; empty otherwise)."""
    uploader = _UPLOADERS.get(output)
    return uploader.stats.metrics() if uploader is not None else {}
