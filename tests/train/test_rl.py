"""`lvr rl` (GRPO): the vision tower runs at most once per video per step, parameters move, a resumed run
equals the uninterrupted one, config errors are readable, and the CLI runs."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from lvr_trainer.cli import main
from lvr_trainer.config import RolloutMode
from lvr_trainer.train.rl import check_rl_config, RLConfigError, run_rl
from lvr_trainer.train.rl_rollout import RolloutUnavailable
from lvr_trainer.model.loading import load_policy

# The strict `format` reward is 0 for every reply of a random-init model (no signal); the shaped
# `format_progress` (partial credit) varies within groups, so GRPO's advantages are non-zero.
SHAPED = [{"name": "format", "weight": 1.0}, {"name": "lvr_trainer.algo.shaped_rewards:format_progress", "weight": 1.0}]


def rl_config(make_config, **sections):
    rl = {"group_size": 8, "max_new_tokens": 12, "kl_coef": 0.01, "rewards": SHAPED, **sections.pop("rl", {})}
    train = {"steps": 2, "batch_size": 2, "grad_accum": 2, **sections.pop("train", {})}
    return make_config(rl=rl, train=train, **sections)


def _weights(cfg, ckpt_dir=None):
    model, _, _ = load_policy(cfg.model, torch.device("cpu"), from_dir=ckpt_dir)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_vision_tower_runs_once_per_video_per_step(make_config):
    """G rollouts + policy prefill + reference prefill reuse one encoding: the forward hook on both vision
    towers fires exactly as often as the feature source encoded, never more than the step's videos."""
    cfg = rl_config(make_config, rl={"mini_batches": 2}, cache={"enabled": False})
    summary = run_rl(cfg)
    first = summary["history"][0]
    assert first["cache/vision_calls"] == first["cache/videos"] >= 1  # nothing cached before step 1
    for h in summary["history"]:
        assert h["cache/vision_calls"] == h["cache/vision_passes"] <= h["cache/videos"]
        assert h["time/ref_logprobs"] > 0 and h["time/rollout"] > 0
    assert summary["vision_passes"] == sum(h["cache/vision_passes"] for h in summary["history"])


def test_a_step_changes_the_language_model_not_the_vision_tower(make_config):
    cfg = rl_config(make_config, train={"steps": 1})
    before = _weights(cfg)
    summary = run_rl(cfg)
    after = _weights(cfg, summary["checkpoint"] + "/model")
    h = summary["history"][0]
    assert h["rollout/informative_groups"] > 0 and h["actor/grad_norm"] > 0
    assert h["rollout/logprob_gap"] < 1e-4  # engine and prefill agree on the sampled tokens
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any("language_model" in k for k in changed)
    assert not any(".visual." in k or k.startswith("model.visual") for k in changed)


def test_resume_equals_uninterrupted_run(make_config, tmp_path):
    full = rl_config(make_config, train={"save_every": 1})
    whole = run_rl(full)
    broken = full.model_copy(update={"output": full.output.model_copy(update={"dir": str(tmp_path / "b")})})
    first = run_rl(broken, stop_after=1)
    assert first["steps"] == 1
    rest = run_rl(broken, resume=True)
    assert rest["start_step"] == 1 and rest["steps"] == 2
    assert rest["history"][0]["reward/total"] == pytest.approx(whole["history"][1]["reward/total"])
    a, b = _weights(full, whole["checkpoint"] + "/model"), _weights(full, rest["checkpoint"] + "/model")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_config_errors_are_readable(make_config):
    with pytest.raises(RLConfigError, match="rl:"):
        run_rl(make_config())
    with pytest.raises(RLConfigError, match="grad_accum"):
        run_rl(rl_config(make_config, rl={"mini_batches": 3}))
    if importlib.util.find_spec("vllm") is None:   # the main venv: vLLM lives in .venv-vllm
        with pytest.raises(RolloutUnavailable, match="needs vLLM in the trainer's environment.*make vllm-venv"):
            run_rl(rl_config(make_config, rollout={"engine": "vllm"}))


def test_cli_runs_one_step(make_config, tmp_path, capsys):
    import yaml

    cfg = rl_config(make_config, train={"steps": 1, "grad_accum": 1})
    path = tmp_path / "rl.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert main(["rl", "--config", str(path)]) == 0
    assert "rl: steps 0->1" in capsys.readouterr().out


@pytest.mark.slow
def test_format_reward_rises_from_random_init(make_config):
    """GRPO from a random-init tiny model: the shaped format reward (`format_progress`, the reward being
    optimised here) climbs from ~0.03 to well above 0.4 in 150 steps (~35 s on one core; 0.29 by step 60 and
    0.38 by step 100 with the session 3 tokenizer, whose extra words change the random init). Honest limit:
    the strict all-or-nothing `format` stays at 0 from random init at this budget (the model learns to
    open with `<think>` and close with `</answer>`, not yet the whole four-tag reply); runs from an SFT
    checkpoint start with well-formed replies (examples/rl_tiny.yaml, BENCHMARKS.md)."""
    cfg = rl_config(make_config, train={"steps": 150, "batch_size": 4, "grad_accum": 1, "seed": 0},
                    optim={"lr": 4e-3, "warmup_steps": 0, "grad_clip": 1.0},
                    rl={"max_new_tokens": 8, "kl_coef": 0.0})
    history = run_rl(cfg)["history"]
    key = "reward/lvr_trainer.algo.shaped_rewards:format_progress"
    start = sum(h[key] for h in history[:10]) / 10
    end = sum(h[key] for h in history[-10:]) / 10
    assert start < 0.15 and end > 0.4 and end > start + 0.3, (start, end)


def test_no_two_prompts_of_a_run_sample_from_the_same_stream():
    """Request i of a step samples from the step's seed + i * G (every engine): 100 steps of 64 prompts on
    4 DP ranks draw from 25,600 distinct streams, so no prompt repeats another's random draws."""
    from lvr_trainer.config import GRPOConfig
    from lvr_trainer.train.rl_rollout import sampling_params

    cfg = GRPOConfig(group_size=8)
    streams = [sampling_params(cfg, 42 + 7919 * rank, step).seed + i * cfg.group_size
               for rank in range(4) for step in range(100) for i in range(64)]
    assert len(set(streams)) == len(streams) and max(streams) < 2 ** 63
    huge = sampling_params(cfg, 2 ** 40, 10 ** 6).seed          # any train.seed gives a seed torch accepts
    torch.Generator().manual_seed(huge + 64 * cfg.group_size)


def test_rollout_metrics_report_accuracy_per_category():
    from lvr_trainer.config import GRPOConfig
    from lvr_trainer.rollout.base import Rollout
    from lvr_trainer.train.rl_rollout import rollout_metrics

    def reply(letter):
        return Rollout([1, 2], [-0.1, -0.2], f"<think>x</think><answer>{letter}</answer>", True)

    # two prompts x G=2: temporal gets 1 of 2 right, spatial 2 of 2
    rollouts = [reply("A"), reply("B"), reply("C"), reply("C")]
    m = rollout_metrics(rollouts, ["A", "A", "C", "C"], GRPOConfig(group_size=2),
                        torch.tensor([1.0, 0.0, 1.0, 1.0]), ["temporal", "temporal", "spatial", "spatial"])
    assert m["rollout/accuracy"] == 0.75
    assert m["rollout/accuracy/temporal"] == 0.5
    assert m["rollout/accuracy/spatial"] == 1.0
    assert m["rollout/informative_groups"] == 0.5
    assert not any(k.startswith("rollout/accuracy/") for k in
                   rollout_metrics(rollouts, ["A"] * 4, GRPOConfig(group_size=2), torch.zeros(4)))


def test_a_run_with_the_rollout_sidecar_equals_the_run_in_process(make_config, tmp_path, assert_same_update):
    """`rollout.mode: sidecar` with `lvr rollout-server` (a real subprocess, the job's own config): the
    trainer pushes its weights before every rollout, so the run samples what the in-process run samples."""
    import socket
    import subprocess
    import sys

    import yaml

    inproc = rl_config(make_config)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sidecar = inproc.model_copy(update={
        "rollout": inproc.rollout.model_copy(update={"mode": RolloutMode.sidecar, "sidecar_url": f"http://127.0.0.1:{port}"}),
        "output": inproc.output.model_copy(update={"dir": str(tmp_path / "sidecar")})})
    config = tmp_path / "trainer.yaml"
    config.write_text(yaml.safe_dump(sidecar.model_dump(mode="json", exclude_none=True)))
    server = subprocess.Popen([sys.executable, "-m", "lvr_trainer.cli", "rollout-server", "--config", str(config),
                               "--port", str(port)])
    try:
        remote = run_rl(sidecar)
        assert server.wait(timeout=30) == 0          # the trainer shut its sidecar down at the end
    finally:
        server.kill()
    local = run_rl(inproc)
    for a, b in zip(local["history"], remote["history"]):
        assert a["reward/total"] == b["reward/total"] and a["rollout/reply_len"] == b["rollout/reply_len"]
        assert b["time/weight_sync"] > 0
    assert_same_update(local["checkpoint"] + "/model", remote["checkpoint"] + "/model")


def test_shared_prefix_run_equals_per_sequence_run(make_config, tmp_path, assert_same_update):
    """Two steps with rl.shared_prefix (the default: each prompt once per micro-batch, its replies attending
    to it) and without: the same replies (sampling is untouched), the same losses, KL, entropy and
    engine-vs-prefill gap to 1e-5, the same weights after two AdamW steps."""
    shared = rl_config(make_config, rl={"mini_batches": 2})
    assert shared.rl.shared_prefix
    per_seq = shared.model_copy(update={"rl": shared.rl.model_copy(update={"shared_prefix": False}),
                                        "output": shared.output.model_copy(update={"dir": str(tmp_path / "b")})})
    a, b = run_rl(shared), run_rl(per_seq)
    for x, y in zip(a["history"], b["history"]):
        assert x["reward/total"] == y["reward/total"] and x["rollout/reply_len"] == y["rollout/reply_len"]
        for key in ("actor/loss", "actor/pg_loss", "actor/ref_kl", "actor/entropy", "rollout/logprob_gap"):
            if key in x:
                assert x[key] == pytest.approx(y[key], abs=1e-5), key
    assert a["history"][1]["actor/ref_kl"] > 0
    assert_same_update(a["checkpoint"] + "/model", b["checkpoint"] + "/model")


def test_shared_prefix_takes_any_attention_kernel(make_config):
    """The grouped attention runs through SDPA whatever the model's kernel, so flash-attention models keep the
    shared prefix (their other attention calls stay on flash)."""
    check_rl_config(rl_config(make_config, model={"attn_implementation": "flash_attention_2"}))
