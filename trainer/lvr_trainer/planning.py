"""A trainer config read as a memory plan's inputs: the model's shapes (a preset's, or config.json from a
model directory or s3:// prefix — never the weights), the workload and the layout. Torch-free except for
presets (their config is built by transformers); the arithmetic is `lvr_trainer.plan`."""

from __future__ import annotations

import json
from pathlib import Path

from lvr_trainer.config import (ModelConfig, ParallelStrategy, Precision, RolloutEngineKind, RolloutMode,
                                TrainerConfig)
from lvr_trainer.plan import (COMPUTE_BYTES, Layout, ModelShape, Plan, Workload, checkpointing_by_default,
                              shape_from_config)

SFT_REPLY_TOKENS = 512      # a chain-of-thought answer


def model_shape(model: ModelConfig) -> ModelShape:
    """Shapes of `model`: a preset's config, or the config.json of `model.path` (a directory, or an s3://
    prefix: only config.json is read)."""
    if model.preset is not None:
        from lvr_trainer.model.loading import load_model

        built, _ = load_model(model, device="meta")
        return shape_from_config(built.config.to_dict())
    path = model.path or ""
    if path.startswith("s3://"):
        from lvr_trainer.storage.s3 import S3Store

        data = S3Store.from_uri(path, suffix="").get("config.json")
        if data is None:
            raise FileNotFoundError(f"model.path {path}: no config.json under this prefix")
        return shape_from_config(json.loads(data))
    config = Path(path).expanduser() / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"model.path {path}: no config.json (a Hugging Face model directory has one)")
    return shape_from_config(json.loads(config.read_text()))


def workload_of(cfg: TrainerConfig, stage: str) -> Workload:
    """What one micro-batch of `stage` processes: the frames sampled (the most the sampler takes), the replies."""
    sampling = cfg.data.sampling
    frames = sampling.num_frames or sampling.max_frames
    if stage == "rl" and cfg.rl is not None:
        return Workload(frames, sampling.max_pixels, cfg.rl.group_size, cfg.rl.max_new_tokens, cfg.rl.shared_prefix,
                        cfg.train.batch_size)
    return Workload(frames, sampling.max_pixels, 1, SFT_REPLY_TOKENS, False, cfg.train.batch_size)


def layout_of(cfg: TrainerConfig, stage: str, gpus: int, gpus_per_node: int | None, shape: ModelShape) -> Layout:
    """How `gpus` trainer GPUs hold the job under `cfg.parallel` and the rollout settings."""
    par = cfg.parallel
    sharded = par.strategy in (ParallelStrategy.fsdp, ParallelStrategy.hsdp) and gpus > 1
    checkpointing = cfg.train.gradient_checkpointing
    if checkpointing is None:
        checkpointing = checkpointing_by_default(shape.hidden, shape.layers)
    rl = stage == "rl" and cfg.rl is not None
    rollout = "none"
    if rl:
        rollout = ("sidecar" if cfg.rollout.mode == RolloutMode.sidecar
                   else "vllm" if cfg.rollout.engine == RolloutEngineKind.vllm else "transformers")
    return Layout(gpus=gpus, sequence_parallel=par.sequence_parallel, sharded=sharded,
                  shard_ranks=(gpus_per_node or gpus) if par.strategy == ParallelStrategy.hsdp else None,
                  checkpointing=checkpointing, reference=rl and cfg.rl.kl_coef > 0,
                  reference_offload=rl and cfg.rl.reference_offload, rollout=rollout,
                  vllm_share=cfg.rollout.gpu_memory_utilization,
                  compute_bytes=4 if cfg.train.precision == Precision.fp32 else COMPUTE_BYTES)


ROLLOUT_TEXT_ALLOWANCE = 1024   # the prompt's text (question, options, template) with room to spare


def job_max_model_len(cfg: TrainerConfig) -> int:
    """The longest prompt + reply of the job's rollouts, for vLLM's `max_model_len` when `rollout.max_model_len`
    is unset: the most video tokens the sampler makes, the prompt's text, the reply (a model's own limit, e.g.
    Qwen2.5-VL's 128k, is below a 3,600-frame prompt)."""
    workload = workload_of(cfg, "rl")
    reply = cfg.rl.max_new_tokens if cfg.rl is not None else SFT_REPLY_TOKENS
    return workload.video_tokens + ROLLOUT_TEXT_ALLOWANCE + reply


def preflight(cfg: TrainerConfig, stage: str, world: int, local_world: int) -> Plan:
    """The run's own plan on its GPUs (`parallel.gpu_memory` each); raises DoesNotFit when it exceeds them and
    `parallel.memory_check` is refuse."""
    from lvr_trainer.plan import DoesNotFit, parse_bytes, plan_memory

    shape = model_shape(cfg.model)
    plan = plan_memory(shape, workload_of(cfg, stage), layout_of(cfg, stage, world, local_world, shape),
                       parse_bytes(cfg.parallel.gpu_memory))
    if not plan.fits and cfg.parallel.memory_check == "refuse":
        raise DoesNotFit(plan)
    return plan
