"""The `rl` (GRPOConfig) and `rollout` (RolloutConfig) sections of the trainer config."""

from __future__ import annotations

import pytest

from lvr_trainer.algo.kinds import KLKind, LossAgg
from lvr_trainer.config import ConfigError, GRPOConfig, RolloutConfig, TrainerConfig, parse_config

BASE = {"model": {"preset": "tiny"}, "data": {"train": "train.jsonl"}, "train": {"steps": 1}}


def _load(**sections):
    return parse_config({**BASE, **sections}, "rl.yaml")


def test_defaults():
    cfg = GRPOConfig()
    assert (cfg.group_size, cfg.clip_low, cfg.clip_high, cfg.dual_clip) == (8, 0.2, 0.3, 3.0)
    assert cfg.kl_kind is KLKind.low_var_kl and cfg.loss_agg is LossAgg.token_mean
    assert [(t.name, t.weight) for t in cfg.rewards] == [("accuracy", 0.9), ("format", 0.1)]
    assert RolloutConfig().engine.value == "transformers"
    assert _load().rl is None  # SFT configs need no rl section


def test_trainer_config_with_rl_section():
    cfg = _load(rl={"group_size": 4, "loss_agg": "seq-mean-token-sum", "kl_kind": "k1", "dual_clip": None,
                    "rewards": [{"name": "accuracy", "weight": 1.0}, {"name": "pkg.mod:fn", "weight": -0.1}]},
                rollout={"engine": "vllm", "mode": "sidecar", "sidecar_url": "http://localhost:8000"})
    assert isinstance(cfg, TrainerConfig)
    assert cfg.rl.loss_agg is LossAgg.seq_mean_token_sum and cfg.rl.dual_clip is None
    assert cfg.rl.rewards[1].name == "pkg.mod:fn"
    assert cfg.rollout.sidecar_url == "http://localhost:8000"


@pytest.mark.parametrize("rl, message", [
    ({"group_size": 1}, "key 'rl.group_size'"),
    ({"dual_clip": 1.0}, "key 'rl.dual_clip'"),
    ({"clip_low": 1.0}, "key 'rl.clip_low'"),
    ({"temperature": 0}, "key 'rl.temperature'"),
    ({"kl_kind": "k4"}, "key 'rl.kl_kind'"),
    ({"loss_agg": "mean"}, "key 'rl.loss_agg'"),
    ({"grop_size": 4}, "did you mean 'group_size'"),
    ({"rewards": []}, "give at least one term"),
    ({"rewards": [{"name": "acc", "weight": 1}]}, "unknown reward 'acc': use one of accuracy, format"),
    ({"rewards": [{"name": "mod:", "weight": 1}]}, "must be written 'package.module:function'"),
    ({"rewards": [{"name": "a b:c", "weight": 1}]}, "must be written 'package.module:function'"),
    ({"rewards": [{"name": "format", "weight": 1}, {"name": "format", "weight": 2}]}, "merge the entries"),
    ({"rewards": [{"name": "format", "weight": float("inf")}]}, "key 'rl.rewards.0.weight'"),
])
def test_rl_errors_name_the_key_and_the_fix(rl, message):
    with pytest.raises(ConfigError, match=message) as err:
        _load(rl=rl)
    assert str(err.value).startswith("rl.yaml: key 'rl")


def test_either_engine_runs_in_process_or_as_a_sidecar():
    for engine in ("transformers", "vllm"):
        assert _load(rl={}, rollout={"engine": engine, "mode": "sidecar", "sidecar_url": "http://x:1"}).rollout.mode
        assert _load(rl={}, rollout={"engine": engine}).rollout.engine.value == engine


@pytest.mark.parametrize("rollout, message", [
    ({"mode": "sidecar", "engine": "vllm"}, "needs `sidecar_url`"),
    ({"mode": "sidecar", "engine": "vllm", "sidecar_url": "localhost:8000"}, "must start with http://"),
    ({"sidecar_url": "http://x:1"}, "remove it, or set mode: sidecar"),
    ({"gpu_memory_utilization": 1.5}, "key 'rollout.gpu_memory_utilization'"),
    ({"engine": "sglang"}, "key 'rollout.engine'"),
])
def test_rollout_errors(rollout, message):
    with pytest.raises(ConfigError, match=message):
        _load(rollout=rollout)


def test_config_stays_importable_without_torch():
    import subprocess
    import sys
    code = ("import sys; sys.modules['torch'] = None; import lvr_trainer.config, lvr_trainer.algo.rewards; "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
