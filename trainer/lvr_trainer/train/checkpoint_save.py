"""Saving a run's checkpoint at a step, every rank its part: rank 0 writes the whole state (ddp), or every
rank its shards in the background (FSDP); an s3:// output is uploaded while training goes on. A SIGTERM
ends the run here too, with a checkpoint (`stop_if_preempted`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from lvr_trainer.config import Precision, TrainerConfig
from lvr_trainer.layout import MODEL_DIR, SHARDED_STATE, TRAINER_STATE
from lvr_trainer.parallel import collectives, heartbeat
from lvr_trainer.parallel.data_parallel import is_fsdp
from lvr_trainer.parallel.grid import ProcessGrid
from lvr_trainer.parallel.timeouts import explain_timeout
from lvr_trainer.train.checkpoint import (latest_checkpoint, mark_latest, prune_checkpoints, rng_state,
                                          save_checkpoint, step_dir)
from lvr_trainer.train.checkpoint_upload import CheckpointUploader, CheckpointUploadError, NodeShare, is_remote
from lvr_trainer.train.preemption import Preempted, StopOnSigterm
from lvr_trainer.train.sharded_checkpoint import PendingSave, export_model_dir, save_sharded

# Rank 0's background uploader per local output directory (one run at a time writes there).
_UPLOADERS: dict[Path, CheckpointUploader] = {}
# Every rank's sharded save in flight per local output directory (FSDP).
_PENDING: dict[Path, PendingSave] = {}


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
        collectives.wait_for_all_ranks("saving a checkpoint (rank 0 writes it while the others wait)")


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
    collectives.wait_for_all_ranks("clearing the checkpoint directory")
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
    collectives.wait_for_all_ranks("finishing the sharded checkpoint")
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


def forget_uploader(output: Path) -> None:
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
