"""The per-GPU memory of a training job before it runs: one accounting for `lvr plan`, the trainer and tests.

Torch-free and pure: the model's shapes come from its config.json (a preset's or a model directory's),
parameter counts are computed from them (`ModelShape`; the tests hold them equal to the real model's on the
meta device), and the job's layout and workload give bytes per GPU by component:

    weights      trained weights as float32 master copies (sharded under fsdp/hsdp) + the frozen vision tower
    gradients    float32, laid out like the weights
    optimizer    AdamW's two float32 moments
    reference    the frozen reference model (bf16 under bf16-mixed, laid out like the policy; 0 when rl.kl_coef
                 is 0 or offloaded)
    activations  one forward + backward of this rank's tokens: with per-layer checkpointing every layer's input
                 plus one layer recomputed with its gradients, without it every layer's intermediates; and the
                 cached video embeddings (whole on every SP rank)
    attention    Ulysses' all-to-all buffers and the grouped attention's per-reply key/value copies, with their
                 gradients (one layer); on CPU also each reply's materialised causal mask
    lm_head      one chunk of float32 logits and its gradient (at most 4,096 scored positions x vocabulary)
    rollout      an in-process engine's KV cache (transformers: each prompt's cache once, shared by its G
                 samples, plus their replies) or vLLM's reserved share; a sidecar has GPUs of its own
    runtime      CUDA context, NCCL buffers and allocator slack: 2 GiB + 5% of the GPU

The state is exact (tests: within 1% of the real sharded plan on the meta device). Activations and attention
are estimates, compared with the measured peak of the trainer's own SFT and RL steps on the CPU by
`bench/plan_check.py` (fp32, SP 1 and 2; BENCHMARKS.md has the figures); the runtime share is a GPU allowance
nothing here measures.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from lvr_trainer.contracts.exits import DOES_NOT_FIT_MARK

GIB = 1024 ** 3
MASTER_BYTES = 4            # float32 master weights, gradients and each AdamW moment
ADAM_MOMENTS = 2
COMPUTE_BYTES = 2           # bf16 activations and frozen weights
LM_HEAD_CHUNK = 4096        # positions per LM-head chunk (parallel.sp_forward.token_logprobs)
PROMPT_TEXT_TOKENS = 256    # the question, options and chat template around the video
RUNTIME_FIXED = 2 * GIB
RUNTIME_SHARE = 0.05


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on in a Qwen2-VL / Qwen2.5-VL model (from its config.json)."""

    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    vision_params: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def language_params(self) -> int:
        """Embeddings, decoder layers (q/k/v with biases, o without, gated MLP, two RMSNorms), final norm, and a
        separate LM head unless tied."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * self.intermediate + 2 * h
        return self.vocab * h * (1 if self.tied else 2) + self.layers * layer + h


def vision_params(model_type: str, vision: dict, out_hidden: int) -> int:
    """Parameters of the vision tower described by `vision_config` (patch embedding, blocks, merger).
    Qwen2-VL: blocks of width `embed_dim` with LayerNorms (weight and bias) and an fc1/fc2 MLP of
    `mlp_ratio` x width; Qwen2.5-VL: width `hidden_size`, RMSNorms and a gated MLP of `intermediate_size`."""
    qwen2 = model_type == "qwen2_vl"
    width, depth = vision["embed_dim"] if qwen2 else vision["hidden_size"], vision["depth"]
    patch, temporal, merge = vision.get("patch_size", 14), vision.get("temporal_patch_size", 2), \
        vision.get("spatial_merge_size", 2)
    channels = vision.get("in_channels", vision.get("in_chans", 3))
    embed = channels * temporal * patch * patch * width
    attn = width * 3 * width + 3 * width + width * width + width
    norm = 2 * width if qwen2 else width
    if qwen2:
        inner = int(width * vision.get("mlp_ratio", 4))
        mlp = (width * inner + inner) + (inner * width + width)
    else:
        inner = vision["intermediate_size"]
        mlp = 2 * (width * inner + inner) + (inner * width + width)
    merged = width * merge * merge
    merger = norm + (merged * merged + merged) + (merged * out_hidden + out_hidden)
    return embed + depth * (2 * norm + attn + mlp) + merger


def shape_from_config(config: dict) -> ModelShape:
    """A `ModelShape` from a Qwen2-VL / Qwen2.5-VL config.json (text settings nested or at the top level)."""
    model_type = config.get("model_type", "qwen2_5_vl")
    if model_type not in ("qwen2_5_vl", "qwen2_vl"):
        raise ValueError(f"model_type {model_type!r}: the planner knows qwen2_5_vl and qwen2_vl")
    text = {**config, **(config.get("text_config") or {})}
    hidden = text["hidden_size"]
    tied = bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    return ModelShape(model_type, hidden, text["intermediate_size"], text["num_hidden_layers"],
                      text["num_attention_heads"], text.get("num_key_value_heads", text["num_attention_heads"]),
                      text["vocab_size"], tied, vision_params(model_type, config["vision_config"], hidden))


@dataclass(frozen=True)
class Workload:
    """What one step processes per rank: the video prompt, the replies and how they are scored."""

    frames: int
    max_pixels: int
    group_size: int = 1             # G replies per prompt (RL); 1 for SFT
    reply_tokens: int = 512
    shared_prefix: bool = True
    prompts_per_micro_batch: int = 1

    @property
    def video_tokens(self) -> int:
        """Qwen-VL: a token per 28 x 28 pixels of a pair of frames (14-pixel patches merged 2 x 2, 2 frames)."""
        return math.ceil(self.frames / 2) * max(1, self.max_pixels // (28 * 28))

    @property
    def prompt_tokens(self) -> int:
        return self.video_tokens + PROMPT_TEXT_TOKENS

    @property
    def sequence_tokens(self) -> int:
        """Tokens of one micro-batch's forward: a packed row [prompt | G replies], or G rows [prompt, reply]."""
        g, p, r = self.group_size, self.prompt_tokens, self.reply_tokens
        per_prompt = p + g * r if self.shared_prefix or g == 1 else g * (p + r)
        return self.prompts_per_micro_batch * per_prompt


@dataclass(frozen=True)
class Layout:
    """How the job's GPUs hold the model: `gpus` trainer ranks (sidecar GPUs excluded), SP, strategy."""

    gpus: int
    sequence_parallel: int = 1
    sharded: bool = True            # fsdp / hsdp (over `shard_ranks`), else every rank holds everything
    shard_ranks: int | None = None  # hsdp: ranks per node; None: every rank
    checkpointing: bool = True
    reference: bool = True
    reference_offload: bool = False
    rollout: str = "transformers"   # transformers | vllm (in process) | sidecar | none (SFT)
    vllm_share: float = 0.5
    compute_bytes: int = COMPUTE_BYTES  # activations, KV and frozen weights: bf16 under bf16-mixed, 4 under fp32
    # GPU SDPA kernels take a reply's lower-right causal mask as a flag; on CPU, SDPA builds it, (L, P + L) in
    # float32 per reply, and the backward keeps it
    fused_attention: bool = True


@dataclass(frozen=True)
class Component:
    name: str
    bytes: int
    note: str = ""


@dataclass(frozen=True)
class Plan:
    components: list[Component]
    gpu_bytes: int
    layout: Layout
    workload: Workload
    shape: ModelShape
    advice: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(c.bytes for c in self.components)

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_bytes

    def largest(self) -> Component:
        return max(self.components, key=lambda c: c.bytes)

    def to_json(self) -> dict:
        return {"fits": self.fits, "total_bytes": self.total, "gpu_bytes": self.gpu_bytes,
                "components": [asdict(c) for c in self.components], "advice": self.advice,
                "layout": asdict(self.layout), "workload": {**asdict(self.workload),
                                                            "video_tokens": self.workload.video_tokens,
                                                            "sequence_tokens": self.workload.sequence_tokens},
                "model": {**asdict(self.shape), "language_params": self.shape.language_params}}


@dataclass(frozen=True)
class ModelCounts:
    """Parameter counts: the language model (trained) and the vision tower (frozen)."""

    language: int
    vision: int


@dataclass(frozen=True)
class StateBytes:
    """Bytes per rank of the training state, by component."""

    weights: int
    gradients: int
    optimizer: int
    reference: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.reference


def state_bytes(counts: ModelCounts, world: int, *, sharded: bool, vision_bytes: int = COMPUTE_BYTES,
                reference: bool = True, reference_bytes: int = COMPUTE_BYTES) -> StateBytes:
    """Per-rank bytes of weights, gradients, AdamW state and reference for a `world`-rank job; `sharded`: FSDP
    over `world` ranks (the vision tower stays whole on every rank)."""
    share = counts.language / world if sharded else counts.language
    vision = counts.vision * vision_bytes
    ref = int(share * reference_bytes) + vision if reference else 0
    return StateBytes(weights=int(share * MASTER_BYTES) + vision, gradients=int(share * MASTER_BYTES),
                      optimizer=int(share * MASTER_BYTES * ADAM_MOMENTS), reference=ref)


def checkpointed_activation_bytes(tokens_per_rank: int, hidden: int, intermediate: int, layers: int,
                                  act_bytes: int = COMPUTE_BYTES) -> int:
    """Activations of one forward + backward with activation checkpointing per decoder layer, per rank, at the
    backward's peak: the input embeddings, every layer's saved input (tokens x hidden), and the layer being
    recomputed: its forward intermediates (the MLP's gate, up and activated products; the attention block's q,
    k, v, output and residual) and the gradients in flight through its MLP, where the backward peaks (the
    product's gradient and the two it splits into, intermediate-wide; two hidden-wide). Compared with the
    measured peak of the trainer's own step by `bench/plan_check.py`."""
    inputs = tokens_per_rank * hidden
    saved = layers * tokens_per_rank * hidden
    recomputed = tokens_per_rank * (3 * intermediate + 5 * hidden)
    gradients = tokens_per_rank * (3 * intermediate + 2 * hidden)
    return (inputs + saved + recomputed + gradients) * act_bytes


def checkpointing_by_default(hidden: int, layers: int) -> bool:
    """Per-layer activation checkpointing is on by default for language models larger than the `small` preset
    (hidden 384 x 4 layers)."""
    return hidden * layers > 384 * 4


def activation_bytes(shape: ModelShape, tokens_per_rank: int, checkpointing: bool,
                     act_bytes: int = COMPUTE_BYTES) -> int:
    """Activations of one forward + backward of `tokens_per_rank` tokens (bf16 unless `act_bytes` says)."""
    if checkpointing:
        return checkpointed_activation_bytes(tokens_per_rank, shape.hidden, shape.intermediate, shape.layers,
                                             act_bytes)
    kv = shape.kv_heads * shape.head_dim
    per_layer = tokens_per_rank * (6 * shape.hidden + 2 * kv + 4 * shape.intermediate)
    return shape.layers * per_layer * act_bytes


def plan_memory(shape: ModelShape, workload: Workload, layout: Layout, gpu_bytes: int) -> Plan:
    """Bytes per GPU of one training step of `workload` under `layout` (see the module docstring), and when it
    does not fit, the settings that would."""
    plan = Plan(components(shape, workload, layout, gpu_bytes), gpu_bytes, layout, workload, shape)
    return plan if plan.fits else replace(plan, advice=advise(shape, workload, layout, gpu_bytes))


def components(shape: ModelShape, workload: Workload, layout: Layout, gpu_bytes: int) -> list[Component]:
    """The per-GPU bytes of `plan_memory`, by component."""
    sp = layout.sequence_parallel
    ranks = (layout.shard_ranks or layout.gpus) if layout.sharded else 1
    counts = ModelCounts(shape.language_params, shape.vision_params)
    cb = layout.compute_bytes
    state = state_bytes(counts, ranks, sharded=layout.sharded, vision_bytes=cb, reference=layout.reference,
                        reference_bytes=cb)
    reference = state.reference if layout.reference and not layout.reference_offload else 0
    tokens = workload.sequence_tokens
    tokens_rank = math.ceil(tokens / sp)
    heads_rank, kv_rank = shape.heads // sp, max(1, shape.kv_heads // sp)
    # the all-to-all's inputs and outputs (q, k, v in; the attention's output back) and their gradients
    ulysses = 4 * tokens * (heads_rank + 2 * kv_rank) * shape.head_dim * cb if sp > 1 else 0
    grouped = 0
    if workload.shared_prefix and workload.group_size > 1:
        per_reply = 2 * (workload.prompt_tokens + workload.reply_tokens) * kv_rank * shape.head_dim * cb
        grouped = 2 * workload.group_size * workload.prompts_per_micro_batch * per_reply    # copies + their grads
        if not layout.fused_attention:
            replies, reply = workload.group_size * workload.prompts_per_micro_batch, workload.reply_tokens
            grouped += replies * reply * (workload.prompt_tokens + reply) * 4
    # the cached video embeddings of the micro-batch's prompts, whole on every rank of the SP group
    video_embeds = workload.prompts_per_micro_batch * workload.video_tokens * shape.hidden * cb
    # the LM head runs on the positions that predict a reply token only (parallel.sp_forward.token_logprobs)
    scored_rank = math.ceil(workload.prompts_per_micro_batch * workload.group_size * workload.reply_tokens / sp)
    kv_cache = 0
    if layout.rollout == "transformers":
        # every layer's keys and values of each prompt once (shared by its G samples) and of the G replies
        per_token = 2 * shape.layers * shape.kv_heads * shape.head_dim * cb
        per_prompt = workload.prompt_tokens + workload.group_size * workload.reply_tokens
        kv_cache = workload.prompts_per_micro_batch * per_prompt * per_token
    elif layout.rollout == "vllm":
        kv_cache = int(layout.vllm_share * gpu_bytes)
    runtime = RUNTIME_FIXED + int(RUNTIME_SHARE * gpu_bytes)
    compute = "bf16" if cb == 2 else "fp32"
    return [
        Component("weights", state.weights,
                  f"fp32 master{' shards' if layout.sharded else ''} + {compute} vision tower"),
        Component("gradients", state.gradients, "fp32"),
        Component("optimizer", state.optimizer, "AdamW, 2 fp32 moments"),
        Component("reference", reference, compute if reference else ("in host memory" if layout.reference else "none")),
        Component("activations", activation_bytes(shape, tokens_rank, layout.checkpointing, cb) + video_embeds,
                  f"{tokens_rank} tokens per rank, {'checkpointed' if layout.checkpointing else 'not checkpointed'}; "
                  "the cached video embeddings whole"),
        Component("attention", ulysses + grouped, "Ulysses buffers + grouped-attention key/value copies, with grads"),
        Component("lm_head", 2 * min(LM_HEAD_CHUNK, scored_rank) * shape.vocab * MASTER_BYTES,
                  "one fp32 logits chunk and gradient"),
        Component("rollout", kv_cache, {"transformers": "KV cache, the prompt shared by its G samples",
                                        "vllm": f"vLLM's {layout.vllm_share:.0%} of the GPU",
                                        "sidecar": "sidecar on GPUs of its own", "none": ""}[layout.rollout]),
        Component("runtime", runtime, "CUDA context, NCCL, allocator slack"),
    ]


def _changes(shape: ModelShape, layout: Layout) -> list[tuple[str, Layout]]:
    """The settings a user could change next, each with the layout it gives."""
    out = []
    if not layout.sharded:
        out.append(("parallel.strategy: fsdp", replace(layout, sharded=True)))
    if not layout.checkpointing:
        out.append(("train.gradient_checkpointing: true", replace(layout, checkpointing=True)))
    sp = layout.sequence_parallel * 2
    if sp <= layout.gpus and layout.gpus % sp == 0 and shape.heads % sp == 0:
        kv = "" if shape.kv_heads % sp == 0 else f" (key/value heads replicated: {shape.kv_heads} < {sp})"
        out.append((f"parallel.sequence_parallel: {sp}{kv}", replace(layout, sequence_parallel=sp)))
    if layout.reference and layout.sharded and not layout.reference_offload:
        out.append(("rl.reference_offload: true", replace(layout, reference_offload=True)))
    if layout.rollout in ("vllm", "transformers"):
        out.append(("rollout: {engine: vllm, mode: sidecar}", replace(layout, rollout="sidecar")))
    return out


def advise(shape: ModelShape, workload: Workload, layout: Layout, gpu_bytes: int) -> list[str]:
    """Settings that would fit, each checked with the same accounting: single changes that fit alone, else the
    smallest set found by taking the most helpful change at a time; then the frames that fit as it is."""
    total = lambda w, lay: sum(c.bytes for c in components(shape, w, lay, gpu_bytes))  # noqa: E731
    out = [label for label, changed in _changes(shape, layout) if total(workload, changed) <= gpu_bytes]
    if not out:
        taken: dict[str, str] = {}          # setting -> its last value (SP doubled twice reads "4", not "2 + 4")
        current = layout
        while total(workload, current) > gpu_bytes:
            options = _changes(shape, current)
            if not options:
                break
            label, best = min(options, key=lambda o: total(workload, o[1]))
            if total(workload, best) >= total(workload, current):
                break
            taken[label.split(":")[0]] = label
            current = best
        if taken and total(workload, current) <= gpu_bytes:
            out.append(" + ".join(taken.values()) + " (together)")
    frames = workload.frames
    while frames > 2:
        frames = frames * 3 // 4
        smaller = replace(workload, frames=frames)
        if total(smaller, layout) <= gpu_bytes:
            out.append(f"data.sampling: at most {frames} frames ({smaller.video_tokens:,} video tokens) as it is")
            break
    return out or ["more GPUs, or a smaller model: none of the settings above fits"]


# ---- the trainer's pre-flight and the operator read the same verdict (its mark: contracts.exits) ----

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "ki": 2 ** 10, "kib": 2 ** 10, "m": 1e6, "mb": 1e6, "mi": 2 ** 20,
          "mib": 2 ** 20, "g": 1e9, "gb": 1e9, "gi": 2 ** 30, "gib": 2 ** 30, "t": 1e12, "tb": 1e12,
          "ti": 2 ** 40, "tib": 2 ** 40}


def parse_bytes(text: str) -> int:
    """'80GiB', '80Gi', '80GB', '80G' (decimal), '85899345920' -> bytes."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"{text!r} is not an amount of memory: write e.g. 80GiB, 80Gi, 80GB or a number of bytes")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


class DoesNotFit(Exception):
    """The job's plan exceeds its GPUs' memory; the message names the largest component and the settings that
    would fit (what a pod's termination message carries to the job's status)."""

    def __init__(self, plan: Plan):
        self.plan = plan
        big = plan.largest()
        super().__init__(
            f"{DOES_NOT_FIT_MARK}: the plan needs {plan.total / GIB:.1f} GiB per GPU of {plan.gpu_bytes / GIB:.1f} "
            f"({(plan.total - plan.gpu_bytes) / GIB:.1f} over; the largest part is {big.name}, "
            f"{big.bytes / GIB:.1f} GiB). Would fit: " + "; ".join(plan.advice))
