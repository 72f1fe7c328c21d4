"""Checkpoints: a Hugging Face model directory (loadable by `from_pretrained`) plus the trainer state
(optimizer, schedule, RNG, step, data position) needed to resume exactly.

Layout under `<output>/checkpoints/step-000123/`:
    model/               config.json, model.safetensors, tokenizer files, video_preprocessor_config.json
    trainer_state.pt     optimizer, scheduler, RNG states, step, epoch position
and `<output>/checkpoints/latest` names the newest complete one (written last, so a crash mid-save
leaves the previous checkpoint as latest).
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from lvr_trainer.layout import CHECKPOINTS, LATEST, MODEL_DIR, TRAINER_STATE, step_name


def step_dir(output: str | Path, step: int) -> Path:
    return Path(output) / CHECKPOINTS / step_name(step)


def latest_checkpoint(output: str | Path) -> Path | None:
    """The newest complete checkpoint under `output`, or None."""
    marker = Path(output) / CHECKPOINTS / LATEST
    if not marker.is_file():
        return None
    path = marker.parent / marker.read_text().strip()
    return path if (path / TRAINER_STATE).is_file() else None


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_model_dir(model, tokenizer, processor, path: Path, state_dict: dict | None = None) -> None:
    """HF-format directory: `from_pretrained(path)` loads it; the processor settings ride along."""
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(str(path))
    (path / "video_preprocessor_config.json").write_text(json.dumps(asdict(processor), indent=2))


def save_checkpoint(output: str | Path, step: int, model, tokenizer, processor, optimizer, scheduler,
                    extra: dict, model_state: dict | None = None, optim_state: dict | None = None) -> Path:
    """Write checkpoint `step` and point `latest` at it. Call on rank 0 with full (gathered) states."""
    final = step_dir(output, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model_dir(model, tokenizer, processor, tmp / MODEL_DIR, model_state)
    torch.save({"step": step, "optimizer": optim_state if optim_state is not None else optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": rng_state(), **extra}, tmp / TRAINER_STATE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    marker = final.parent / LATEST
    marker.with_suffix(".tmp").write_text(final.name)
    marker.with_suffix(".tmp").replace(marker)
    return final


def load_trainer_state(checkpoint: Path) -> dict:
    return torch.load(checkpoint / TRAINER_STATE, map_location="cpu", weights_only=False)
