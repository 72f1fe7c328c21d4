"""Load a Qwen2-VL / Qwen2.5-VL model and its tokenizer: from a directory, an s3:// prefix, or a preset.

`load_model(ModelConfig) -> (model, tokenizer)` is the one entry point the loops use. Real checkpoints
(e.g. Qwen2.5-VL-7B-Instruct) go through `from_pretrained` unchanged; presets are random-init with a
fixed seed. CPU runs always use float32.
"""

from __future__ import annotations

import os
from pathlib import Path

from lvr_trainer.config import ModelConfig

SUPPORTED_TYPES = ("qwen2_5_vl", "qwen2_vl")


def resolve_model_path(path: str, cache_dir: str | Path | None = None, timeout_s: float = 30.0) -> Path:
    """A local directory for `path`: itself, or an s3://bucket/prefix mirrored under `cache_dir`.

    Objects whose local copy has the same size are not downloaded again.
    """
    if not path.startswith("s3://"):
        local = Path(path).expanduser()
        if not local.is_dir():
            raise FileNotFoundError(f"model.path {path}: no such directory; give a Hugging Face model "
                                    "directory (config.json, *.safetensors, tokenizer files) or s3://bucket/prefix")
        return local
    from lvr_trainer.cache.s3 import S3Store

    store = S3Store.from_uri(path, timeout_s=timeout_s, suffix="")
    dest = Path(cache_dir or os.path.expanduser("~/.cache/lvr/models")) / path.removeprefix("s3://")
    n = store.download_prefix(dest)
    if n == 0 and not (dest / "config.json").exists():
        raise FileNotFoundError(f"model.path {path}: no objects under this prefix")
    return dest


def _dtype(cfg: ModelConfig, device):
    import torch

    if device is None or str(device) == "cpu" or not torch.cuda.is_available():
        return torch.float32
    return getattr(torch, cfg.dtype)


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
    """
    from lvr_trainer.model.tokenizer import load_tokenizer

    dtype = _dtype(cfg, device)
    if cfg.preset is not None:
        tokenizer = load_tokenizer(cfg.tokenizer)
        model = build_preset(cfg.preset, tokenizer, cfg.seed, cfg.attn_implementation).to(dtype)
    else:
        from transformers import AutoConfig, AutoModelForImageTextToText

        path = resolve_model_path(cfg.path)
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        if config.model_type not in SUPPORTED_TYPES:
            raise ValueError(f"model.path {cfg.path}: model_type {config.model_type!r} is not supported; "
                             f"use one of {', '.join(SUPPORTED_TYPES)}")
        model = AutoModelForImageTextToText.from_pretrained(
            str(path), dtype=dtype, attn_implementation=cfg.attn_implementation, local_files_only=True)
        tokenizer = load_tokenizer(str(path))
    if cfg.freeze_vision:
        freeze_vision_tower(model)
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer


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
