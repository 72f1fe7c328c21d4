"""Load a Qwen2-VL / Qwen2.5-VL model and its tokenizer: from a directory, an s3:// prefix, or a preset.

`load_model(ModelConfig) -> (model, tokenizer)` is the one entry point; `load_policy` adds the video
processor saved beside the weights. Real checkpoints (e.g. Qwen2.5-VL-7B-Instruct) go through
`from_pretrained` unchanged; presets are random-init with a fixed seed. `device="meta"` builds the
architecture without reading weights (the trainer's ranks other than 0 receive rank 0's by broadcast).
Under torchrun an s3:// model is downloaded once per node.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from lvr_trainer.config import ModelConfig
from lvr_trainer.model.processor import VideoProcessor

SUPPORTED_TYPES = ("qwen2_5_vl", "qwen2_vl")


def resolve_model_path(path: str, cache_dir: str | Path | None = None, timeout_s: float = 30.0) -> Path:
    """A local directory for `path`: itself, or an s3://bucket/prefix mirrored under `cache_dir`.

    Objects whose local copy has the same size are not downloaded again. Under torch.distributed the
    mirror is made by the first local rank of each node while the node's other ranks wait (not by
    every rank into the same directory at once), so every rank must call this together.
    """
    local = local_model_dir(path, cache_dir)
    if not path.startswith("s3://"):
        if not local.is_dir():
            raise FileNotFoundError(f"model.path {path}: no such directory; give a Hugging Face model "
                                    "directory (config.json, *.safetensors, tokenizer files) or s3://bucket/prefix")
        return local
    once_per_node(lambda: _mirror(path, local, timeout_s), f"downloading model.path {path}")
    return local


def local_model_dir(path: str, cache_dir: str | Path | None = None) -> Path:
    """Where `model.path`'s files are on this machine: the directory itself, or an s3:// model's mirror (pure)."""
    if not path.startswith("s3://"):
        return Path(path).expanduser()
    return Path(cache_dir or os.path.expanduser("~/.cache/lvr/models")) / path.removeprefix("s3://")


def files_digest(directory: str | Path) -> str:
    """sha256 over a model directory's weight files (each file's name, size and bytes, in name order, read in
    16 MiB pieces): what a job started from, proven without holding the weights (the SFT -> RL hand-off)."""
    import hashlib

    digest = hashlib.sha256()
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{directory}: no *.safetensors weight files")
    for path in files:
        digest.update(f"{path.name}|{path.stat().st_size}|".encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(16 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _mirror(uri: str, dest: Path, timeout_s: float) -> int:
    """Download the objects under `uri` into `dest` (those not already there); how many were fetched."""
    from lvr_trainer.storage.s3 import S3Store

    n = S3Store.from_uri(uri, timeout_s=timeout_s, suffix="").download_prefix(dest)
    if n == 0 and not (dest / "config.json").exists():
        raise FileNotFoundError(f"model.path {uri}: no objects under this prefix")
    return n


def once_per_node(fn, what: str):
    """`fn()` on the first local rank (LOCAL_RANK 0) of each node while the node's other ranks wait; a
    plain call without torch.distributed. Every rank must call it together. Returns `fn`'s result on
    the ranks that ran it, None on the others. If it fails on any node, every rank raises: the failing
    ones their own error, the others one that says where to look (no rank is left waiting)."""
    import torch.distributed as dist

    from lvr_trainer.parallel import collectives

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return fn()
    result, error = None, None
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - shared with every rank below, then re-raised
            error = err
    failed = collectives.group_tensor([0 if error is None else 1])
    collectives.all_reduce(failed, op=dist.ReduceOp.MAX)
    if error is not None:
        raise error
    if int(failed.item()):
        raise RuntimeError(f"{what} failed on the first rank of another node; the reason is in that rank's log")
    return result


def inference_dtype(cfg: ModelConfig, device=None):
    """The dtype `cfg` loads in: `cfg.dtype` on any device (CPU included, so tests see what a GPU run
    holds), or when unset bfloat16 on a GPU and float32 elsewhere. A trainer config always sets it
    (from `train.precision`); the trainer then loads its trained weights in float32 regardless."""
    import torch

    if cfg.dtype is not None:
        return getattr(torch, cfg.dtype)
    on_gpu = device is not None and torch.device(device).type == "cuda"
    return torch.bfloat16 if on_gpu else torch.float32


def freeze_vision_tower(model) -> None:
    """Stop gradients into the vision tower (its embeddings stay valid for the cache)."""
    for p in vision_tower(model).parameters():
        p.requires_grad_(False)


def vision_tower(model):
    """The vision encoder module of a Qwen-VL model (`model.model.visual` in transformers 5.x)."""
    inner = getattr(model, "model", model)
    visual = getattr(inner, "visual", None) or getattr(model, "visual", None)
    if visual is None:
        raise TypeError(f"{type(model).__name__} has no vision tower; expected a Qwen2-VL/Qwen2.5-VL model")
    return visual


def build_preset(name: str, tokenizer, seed: int = 0, attn_implementation: str = "sdpa"):
    """A random-init preset model whose vocabulary and vision token ids match `tokenizer`."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    from lvr_trainer.model.presets import build_preset_config
    from lvr_trainer.model.tokenizer import vision_token_ids

    config = build_preset_config(name, len(tokenizer), vision_token_ids(tokenizer),
                                 eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cls = Qwen2VLForConditionalGeneration if config.model_type == "qwen2_vl" else Qwen2_5_VLForConditionalGeneration
        model = cls._from_config(config, attn_implementation=attn_implementation)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def load_model(cfg: ModelConfig, device=None):
    """`(model, tokenizer)` for `cfg`, in eval mode, on `device` (default CPU).

    The vision tower is frozen when `cfg.freeze_vision` (the default), so cached embeddings stay valid.
    On `device="meta"` the model has the architecture, dtypes and frozen parts but no storage and no
    weights read: a skeleton for `lvr_trainer.parallel.data_parallel.distribute_weights` to fill.
    """
    import torch

    from lvr_trainer.model.prompt import use_reference_positions
    from lvr_trainer.model.tokenizer import load_tokenizer

    dtype = inference_dtype(cfg, device)
    meta = device is not None and torch.device(device).type == "meta"
    if cfg.preset is not None:
        tokenizer = load_tokenizer(cfg.tokenizer)
        with torch.device("meta") if meta else contextlib.nullcontext():
            model = build_preset(cfg.preset, tokenizer, cfg.seed, cfg.attn_implementation).to(dtype)
    else:
        path = resolve_model_path(cfg.path)
        model = (_skeleton_from_dir if meta else _from_dir)(cfg, path, dtype)
        tokenizer = load_tokenizer(str(path))
    if cfg.freeze_vision:
        freeze_vision_tower(model)
    use_reference_positions(model)     # Qwen's own mRoPE positions after a video (model/prompt.py)
    if device is not None and not meta:
        model = model.to(device)
    return model.eval(), tokenizer


def load_policy(cfg: ModelConfig, device, from_dir: str | Path | None = None):
    """(model, tokenizer, processor); `from_dir` (a checkpoint's model/) overrides `cfg`'s weights."""
    if from_dir is not None:
        cfg = cfg.model_copy(update={"path": str(from_dir), "preset": None})
    model, tokenizer = load_model(cfg, device)
    if cfg.path is not None and _has_processor_config(cfg.path):
        processor = VideoProcessor.from_pretrained(cfg.path)
    else:
        processor = VideoProcessor.from_model_config(model.config)
    return model, tokenizer, processor


def _has_processor_config(path: str) -> bool:
    p = Path(path)
    return p.is_dir() and any((p / n).is_file() for n in ("video_preprocessor_config.json",
                                                          "preprocessor_config.json"))


def _checked_config(cfg: ModelConfig, path: Path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    if config.model_type not in SUPPORTED_TYPES:
        raise ValueError(f"model.path {cfg.path}: model_type {config.model_type!r} is not supported; "
                         f"use one of {', '.join(SUPPORTED_TYPES)}")
    return config


def _from_dir(cfg: ModelConfig, path: Path, dtype):
    from transformers import AutoModelForImageTextToText

    _checked_config(cfg, path)
    return AutoModelForImageTextToText.from_pretrained(
        str(path), dtype=dtype, attn_implementation=cfg.attn_implementation, local_files_only=True)


def _skeleton_from_dir(cfg: ModelConfig, path: Path, dtype):
    """The directory's architecture on the meta device, with its generation config (so that `generate`
    stops on the same tokens as on rank 0), and no weights read."""
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    config = _checked_config(cfg, path)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype,
                                                        attn_implementation=cfg.attn_implementation)
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(path), local_files_only=True)
    return model


def weights_digest(model) -> str:
    """sha256 over every parameter and buffer of the state dict (names, dtypes, shapes and bytes, in name
    order): equal for the same weights whatever the process, so a job can prove it started from exactly
    the weights another job saved (the SFT -> RL handoff)."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
