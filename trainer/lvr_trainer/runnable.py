"""What the trainer can run: one check, shared by the trainer at start-up and the operator at admission.

A config can be schema-valid and still not runnable: an output URI
the trainer cannot write, a sequence-parallel size that does not divide the GPUs or the model's
attention heads. The trainer refuses these when it starts;
the operator calls the same function before creating any pod, so such a job becomes `InvalidSpec`
naming the field instead of a crash loop. Pure (reads at most a local config.json), torch-free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lvr_trainer.config import ConfigError, ModelConfig, ParallelConfig, ParallelStrategy, TrainerConfig

Stage = Literal["sft", "rl"]
# URI schemes the trainer reads and writes (train/checkpoint_upload.py, cache/store.py, data/s3_videos.py).
REMOTE_SCHEMES = ("s3://",)


@dataclass(frozen=True)
class Problem:
    """One reason a config cannot run: the config key and what to do about it."""

    key: str
    message: str


def _uri_problem(key: str, value: str | None, *, local_ok: bool = True) -> Problem | None:
    """A location must be s3://bucket/... or a path; any other scheme (ftp://, gs://, http://) is refused."""
    if value is None or value.startswith(REMOTE_SCHEMES):
        return None
    if "://" in value:
        scheme = value.split("://", 1)[0]
        return Problem(key, f"{value!r}: scheme '{scheme}://' is not supported; use s3://bucket/prefix"
                       + (" or a path on a shared volume" if local_ok else ""))
    return None


def attention_heads(model: ModelConfig) -> int | None:
    """The model's query-head count when it can be known without loading it: a preset's, or a local
    directory's config.json; None for an s3:// model (checked again when the trainer loads it)."""
    if model.preset is not None:
        from lvr_trainer.model.presets import PRESETS

        preset = PRESETS.get(model.preset)
        return preset.heads if preset else None
    config = Path(model.path or "") / "config.json"
    if not model.path or model.path.startswith(REMOTE_SCHEMES) or not config.is_file():
        return None
    data = json.loads(config.read_text())
    text = data.get("text_config") or {}
    heads = text.get("num_attention_heads", data.get("num_attention_heads"))
    return int(heads) if heads else None


def runnable_problems(cfg: TrainerConfig, *, stage: Stage, world_size: int | None = None,
                      heads: int | None = None) -> list[Problem]:
    """Everything in `cfg` that the trainer would refuse at run time, each with its key and fix.

    `world_size`: processes in the job (nodes x processes per node), when known; `heads`: the model's
    attention heads, when known (see `attention_heads`)."""
    out = parallel_problems(cfg.parallel, world_size, heads)
    for key, value in (("output.dir", cfg.output.dir), ("cache.uri", cfg.cache.uri), ("model.path", cfg.model.path),
                       ("data.train", cfg.data.train), ("data.val", cfg.data.val),
                       ("data.video_root", cfg.data.video_root)):
        if (p := _uri_problem(key, value)) is not None:
            out.append(p)
    if stage == "rl":
        if cfg.rl is None:
            out.append(Problem("rl", "`lvr rl` needs an `rl` section (GRPO settings); `rl: {}` takes the defaults"))
        elif cfg.rl.reference_offload and cfg.parallel.strategy == ParallelStrategy.ddp:
            out.append(Problem("rl.reference_offload", "offloads the reference model's FSDP shards; with "
                               "parallel.strategy ddp there are none: set strategy fsdp or hsdp, or drop it"))
    return out


def parallel_problems(par: ParallelConfig, world_size: int | None = None, heads: int | None = None) -> list[Problem]:
    """The parallel layout's problems (part of `runnable_problems`)."""
    out: list[Problem] = []
    sp = par.sequence_parallel
    if world_size is not None and world_size % sp:
        fits = [d for d in range(1, world_size + 1) if world_size % d == 0]
        out.append(Problem("parallel.sequence_parallel", f"{sp} does not divide the {world_size} processes of "
                           f"the job (nodes x processes per node); use one of {', '.join(map(str, fits))}"))
    if heads is not None and heads % sp:
        fits = [d for d in range(1, heads + 1) if heads % d == 0]
        out.append(Problem("parallel.sequence_parallel", f"{sp} does not divide the model's {heads} attention "
                           f"heads (Ulysses gives each rank heads / SP); use one of {', '.join(map(str, fits))}"))
    return out


def raise_problems(problems: list[Problem], source: str) -> None:
    """Raise ConfigError listing every problem as `source: key 'k': message` (nothing when none)."""
    if problems:
        raise ConfigError("\n".join(f"{source}: key '{p.key}': {p.message}" for p in problems))


def check_runnable(cfg: TrainerConfig, *, stage: Stage, source: str, world_size: int | None = None,
                   heads: int | None = None) -> None:
    """`runnable_problems`, raised as one ConfigError."""
    raise_problems(runnable_problems(cfg, stage=stage, world_size=world_size, heads=heads), source)
