"""Checkpoints: a Hugging Face model directory (loadable by `from_pretrained`) plus the trainer state
(optimizer, schedule, RNG, step, data position) needed to resume exactly.

Layout under `<output>/checkpoints/step-000123/`:
    model/               config.json, model.safetensors, tokenizer files, video_preprocessor_config.json
    trainer_state.pt     optimizer, scheduler, RNG states, step, epoch position
and `<output>/checkpoints/latest` names the newest complete one (written last, so a crash mid-save
leaves the previous checkpoint as latest). After each save only the newest `train.keep_last` are kept
(`stale_checkpoints`, shared with the S3 side in `remote.py`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import pickle
import random
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from lvr_trainer.config import ConfigError
from lvr_trainer.layout import CHECKPOINTS, LATEST, MODEL_DIR, TRAINER_STATE, checked_step_name, step_name


def step_dir(output: str | Path, step: int) -> Path:
    return Path(output) / CHECKPOINTS / step_name(step)


def latest_checkpoint(output: str | Path) -> Path | None:
    """The newest complete checkpoint under `output`, or None."""
    marker = Path(output) / CHECKPOINTS / LATEST
    if not marker.is_file():
        return None
    try:
        path = marker.parent / checked_step_name(marker.read_text(), str(marker))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return path if (path / TRAINER_STATE).is_file() else None


def rng_state() -> dict:
    """Every generator's state in types `torch.load(weights_only=True)` reads back (no numpy objects)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": (name, keys.tolist(), int(pos), int(has_gauss), float(cached)),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_model_dir(model, tokenizer, processor, path: Path) -> None:
    """HF-format directory: `from_pretrained(path)` loads it; the processor settings ride along."""
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), safe_serialization=True)
    save_processing_files(tokenizer, processor, path)


def save_processing_files(tokenizer, processor, path: Path) -> None:
    """The tokenizer's files and our video processor's settings, beside a model's weights."""
    tokenizer.save_pretrained(str(path))
    (path / "video_preprocessor_config.json").write_text(json.dumps(asdict(processor), indent=2))


def save_checkpoint(output: str | Path, step: int, model, tokenizer, processor, optimizer, scheduler,
                    extra: dict) -> Path:
    """Write checkpoint `step` (the whole model and optimizer state) and point `latest` at it. Call on rank 0
    of a job whose ranks hold the whole model (ddp)."""
    final = step_dir(output, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model_dir(model, tokenizer, processor, tmp / MODEL_DIR)
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": rng_state(), **extra}, tmp / TRAINER_STATE)
    replace_dir(tmp, final)
    mark_latest(final)
    return final


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def replace_dir(new: Path, final: Path) -> None:
    """Put directory `new` in place of `final`. A checkpoint re-saved under the name `latest` holds is
    swapped in atomically, so `latest` never names a missing or half-written directory; where the file
    system cannot swap, the old one is moved aside first (a window of two renames)."""
    if not final.exists():
        new.rename(final)
        return
    if not _exchange(new, final):
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        new.rename(final)
        new = old
    shutil.rmtree(new, ignore_errors=True)


def mark_latest(checkpoint: Path) -> None:
    """Point `latest` at `checkpoint` (atomically: written aside, then renamed over the marker)."""
    marker = checkpoint.parent / LATEST
    marker.with_suffix(".tmp").write_text(checkpoint.name)
    marker.with_suffix(".tmp").replace(marker)


def load_trainer_state(checkpoint: Path) -> dict:
    """The trainer state, memory-mapped: the optimizer tensors are read from the page cache (shared by a
    node's ranks) as they are copied to their parameters, not held as a full copy per rank. Tensors and
    plain containers only (`weights_only`): a file from a shared bucket cannot run code in the trainer."""
    path = checkpoint / TRAINER_STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise ConfigError(f"{path} holds more than tensors and plain values, so it is not loaded (a checkpoint "
                          f"written by an older lvr, or not by lvr at all): {str(err).splitlines()[0]}. Resume "
                          "from a checkpoint this version wrote, or start the run afresh") from None


_STEP_DIR = re.compile(r"step-(\d+)")


def stale_checkpoints(names: list[str], latest: str | None, keep_last: int | None) -> list[str]:
    """The checkpoint directory names (`step-000123`) to delete so that the `keep_last` highest steps
    remain; never `latest`, whatever its step. Other names (the marker, `.tmp` leftovers) are ignored.
    `keep_last` None keeps everything (pure)."""
    if keep_last is None:
        return []
    steps = sorted((int(m.group(1)), n) for n in set(names) if (m := _STEP_DIR.fullmatch(n)))
    keep = {n for _, n in steps[-keep_last:]}
    return [n for _, n in steps if n not in keep and n != latest]


def prune_checkpoints(output: str | Path, keep_last: int | None) -> list[str]:
    """Delete this output's local checkpoints beyond the newest `keep_last` (never `latest`'s); their names."""
    root = Path(output) / CHECKPOINTS
    marker = root / LATEST
    latest = marker.read_text().strip() if marker.is_file() else None
    names = [p.name for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    stale = stale_checkpoints(names, latest, keep_last)
    for name in stale:
        shutil.rmtree(root / name, ignore_errors=True)
    return stale
