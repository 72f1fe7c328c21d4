"""Checkpoints read back safely: trainer state loads with `weights_only=True`, the `latest` marker can only
name a step directory, and re-saving the checkpoint `latest` names never leaves it pointing nowhere."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lvr_trainer.config import ConfigError
from lvr_trainer.layout import checked_step_name
from lvr_trainer.train import checkpoint
from lvr_trainer.train.checkpoint import (latest_checkpoint, load_trainer_state, mark_latest, replace_dir,
                                          rng_state, set_rng_state)


class Payload:
    """Anything that is not a tensor or a plain value: unpickling it would run code."""


def _checkpoint(root: Path, name: str, state: dict) -> Path:
    path = root / "checkpoints" / name
    path.mkdir(parents=True)
    torch.save(state, path / "trainer_state.pt")
    return path


def test_trainer_state_with_the_rng_loads_weights_only_and_restores_every_generator(tmp_path):
    model = torch.nn.Linear(3, 2)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    optim.step()
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: 1.0)
    saved = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1))
    path = _checkpoint(tmp_path, "step-000001", {"step": 1, "optimizer": optim.state_dict(),
                                                 "scheduler": sched.state_dict(), "rng": saved})
    state = load_trainer_state(path)
    set_rng_state(state["rng"])
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])
    assert state["step"] == 1 and state["optimizer"]["state"][0]["exp_avg"].shape == (2, 3)


def test_a_trainer_state_holding_objects_is_refused_not_unpickled(tmp_path):
    path = _checkpoint(tmp_path, "step-000002", {"step": 2, "payload": Payload()})
    with pytest.raises(ConfigError, match="holds more than tensors and plain values"):
        load_trainer_state(path)


@pytest.mark.parametrize("marker", ["../../etc", "/tmp/x", "step-1", "step-000003/../..", "model"])
def test_a_latest_marker_that_names_no_step_directory_is_an_error(tmp_path, marker):
    _checkpoint(tmp_path, "step-000003", {"step": 3})
    (tmp_path / "checkpoints" / "latest").write_text(marker)
    with pytest.raises(ConfigError, match="not a checkpoint name"):
        latest_checkpoint(tmp_path)
    (tmp_path / "checkpoints" / "latest").write_text("step-000003\n")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-000003"
    assert checked_step_name("step-1234567", "x") == "step-1234567"


@pytest.mark.parametrize("swap", [True, False])
def test_re_saving_the_checkpoint_latest_names_never_leaves_latest_pointing_nowhere(tmp_path, monkeypatch, swap):
    final = _checkpoint(tmp_path, "step-000004", {"step": 4, "version": "old"})
    mark_latest(final)
    new = _checkpoint(tmp_path, "step-000004.tmp", {"step": 4, "version": "new"})
    seen = []
    real_rmtree, real_rename = shutil.rmtree, Path.rename

    def check(*_):                                  # at every step of the replacement, latest is complete
        seen.append(latest_checkpoint(tmp_path))
    monkeypatch.setattr(checkpoint.shutil, "rmtree", lambda *a, **k: (check(), real_rmtree(*a, **k)))
    if not swap:
        monkeypatch.setattr(checkpoint, "_exchange", lambda a, b: False)
    monkeypatch.setattr(Path, "rename", lambda self, to: (check(), real_rename(self, to))[1])
    replace_dir(new, final)
    check()
    if swap:                                         # one atomic exchange: never a gap
        assert all(s == final for s in seen)
    assert seen[-1] == final and load_trainer_state(final)["version"] == "new"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-000004"]


def test_a_run_resumed_at_its_last_step_does_not_rewrite_the_checkpoint_latest_names(make_config, tmp_path):
    from lvr_trainer.train.sft import run_sft

    cfg = make_config(train={"steps": 2, "save_every": 2}, output={"dir": str(tmp_path / "out")})
    run_sft(cfg)
    state = tmp_path / "out/checkpoints/step-000002/trainer_state.pt"
    before = state.stat().st_mtime_ns
    again = run_sft(cfg, resume=True)
    assert again["start_step"] == again["steps"] == 2 and state.stat().st_mtime_ns == before
    assert again["checkpoint"].endswith("step-000002")
