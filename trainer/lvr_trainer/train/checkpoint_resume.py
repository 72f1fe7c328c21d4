"""Where a resumed run starts: the latest checkpoint, pulled onto every node, and the optimizer, schedule
and RNG state loaded from it."""

from __future__ import annotations

from pathlib import Path

from lvr_trainer.config import ConfigError, TrainerConfig
from lvr_trainer.layout import SHARDED_STATE, TRAINER_STATE
from lvr_trainer.model.loading import once_per_node
from lvr_trainer.parallel.data_parallel import load_full_states
from lvr_trainer.parallel.grid import ProcessGrid
from lvr_trainer.parallel.timeouts import explain_timeout
from lvr_trainer.train.checkpoint import latest_checkpoint, load_trainer_state, set_rng_state
from lvr_trainer.train.checkpoint_upload import is_remote, pull_latest
from lvr_trainer.train.sharded_checkpoint import load_sharded


def resume_point(cfg: TrainerConfig, output: Path) -> Path | None:
    """The checkpoint to resume from, present on every node: for an s3:// output the first rank of each
    node pulls it into that node's staging directory while the node's other ranks wait."""
    if is_remote(cfg.output.dir):
        with explain_timeout("pulling the checkpoint to resume from"):
            once_per_node(lambda: pull_latest(cfg.output.dir, output),
                          f"pulling the latest checkpoint of {cfg.output.dir}")
    return latest_checkpoint(output)


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
