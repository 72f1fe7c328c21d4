"""CoT-SFT: loss only on the response, exact resume, checkpoints loadable by from_pretrained, and DP
over 2 gloo processes equal to one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lvr_trainer.data.schema import read_records
from lvr_trainer.inputs.examples import IGNORE, build_example, collate, sft_target
from lvr_trainer.train.batch_sampling import global_indices, rank_micro_batches
from lvr_trainer.train.logprobs import response_logprobs
from lvr_trainer.train.sft import run_sft
from lvr_trainer.inputs.features import make_feature_source
from lvr_trainer.model.loading import load_policy


@pytest.fixture()
def policy_and_example(make_config, tiny_data):
    cfg = make_config()
    model, tok, proc = load_policy(cfg.model, torch.device("cpu"))
    records, _ = read_records(tiny_data / "train.jsonl")
    source = make_feature_source(model, proc, cfg, tiny_data)
    ex = build_example(model, tok, records[0], source(records[0]), sft_target(records[0], True))
    return model, tok, records[0], ex


def test_labels_cover_exactly_the_response(policy_and_example):
    model, tok, record, ex = policy_and_example
    response = tok(sft_target(record, True), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert (ex.labels[: ex.prompt_len] == IGNORE).all()
    assert ex.labels[ex.prompt_len:].tolist() == response
    assert ex.input_ids[ex.prompt_len:].tolist() == response
    text = tok.decode(ex.labels[ex.prompt_len:].tolist())
    assert "<think>" in text and f"<answer> {record.answer} </answer>" in text.replace("<answer>", "<answer> ").replace("</answer>", " </answer>").replace("  ", " ")


def test_loss_equals_cross_entropy_on_response_tokens_only(policy_and_example):
    """Our masked log-prob loss equals an independent cross-entropy over the HF model's full logits,
    restricted to response positions; prompt positions carry no gradient."""
    model, tok, record, ex = policy_and_example
    batch = collate([ex], tok.pad_token_id)
    mask = batch.target_ids != IGNORE
    ours = -(response_logprobs(model, batch, None) * mask).sum() / mask.sum()
    from lvr_trainer.model.encode import embed_inputs

    embeds = embed_inputs(model, batch.input_ids, batch.video_embeds).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, position_ids=batch.position_ids,
                   attention_mask=batch.attention_mask).logits
    p = ex.prompt_len
    ref = torch.nn.functional.cross_entropy(logits[0, p - 1:-1], batch.input_ids[0, p:])
    assert abs(ours.item() - ref.item()) < 1e-5
    ref.backward()
    # positions after the last prompt token's prediction feed nothing back into prompt-position outputs:
    # the gradient reaching the final prompt-only positions' *outputs* is zero, i.e. no loss term there
    grads = torch.autograd.grad(
        torch.nn.functional.cross_entropy(
            model(inputs_embeds=embeds, position_ids=batch.position_ids).logits[0, p - 1:-1],
            batch.input_ids[0, p:]), embeds)[0]
    assert grads[0, p:].abs().sum() > 0  # response inputs matter


def test_global_batches_are_pure_and_cover_epochs():
    a = global_indices(10, seed=3, step=2, global_batch=4)
    assert a == global_indices(10, seed=3, step=2, global_batch=4)
    epoch = sum((global_indices(10, 3, s, 5) for s in range(2)), [])
    assert sorted(epoch) == list(range(10))
    assert rank_micro_batches(list(range(8)), batch_size=2, grad_accum=2, dp_size=2, dp_rank=1) == [[2, 3], [6, 7]]


def test_step_changes_language_model_but_not_frozen_vision(make_config):
    cfg = make_config(train={"steps": 2})
    model, _, _ = load_policy(cfg.model, torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summary = run_sft(cfg)
    ckpt = Path(summary["checkpoint"]) / "model"
    after, _, _ = load_policy(cfg.model, torch.device("cpu"), from_dir=ckpt)
    changed = [k for k, v in after.state_dict().items() if not torch.equal(v, before[k])]
    assert any("language_model" in k for k in changed)
    assert not any(".visual." in k or k.startswith("model.visual") for k in changed)
    assert summary["vision_passes"] <= 5  # train videos encoded once, then reused from memory


def test_resume_matches_uninterrupted_run_step_for_step(make_config, tmp_path):
    full = run_sft(make_config(train={"steps": 6, "save_every": 3}, output={"dir": str(tmp_path / "a")}))
    cfg = make_config(train={"steps": 6, "save_every": 3}, output={"dir": str(tmp_path / "b")})
    first = run_sft(cfg, stop_after=3)
    assert first["steps"] == 3
    second = run_sft(cfg, resume=True)
    assert second["start_step"] == 3
    assert first["losses"] + second["losses"] == pytest.approx(full["losses"], abs=1e-6)
    a = torch.load(tmp_path / "a/checkpoints/step-000006/trainer_state.pt", weights_only=False)
    b = torch.load(tmp_path / "b/checkpoints/step-000006/trainer_state.pt", weights_only=False)
    assert a["step"] == b["step"] == 6


def test_checkpoint_round_trips_through_from_pretrained(make_config):
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    cfg = make_config(train={"steps": 1})
    summary = run_sft(cfg)
    model_dir = Path(summary["checkpoint"]) / "model"
    model, tok, proc = load_policy(cfg.model, torch.device("cpu"), from_dir=model_dir)
    hf = AutoModelForImageTextToText.from_pretrained(str(model_dir)).eval()
    hf_tok = AutoTokenizer.from_pretrained(str(model_dir))
    assert hf_tok.convert_tokens_to_ids("<|video_pad|>") == hf.config.video_token_id
    for (k, v), (k2, v2) in zip(model.state_dict().items(), hf.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert json.loads((model_dir / "video_preprocessor_config.json").read_text())["merge_size"] == 2
    assert (Path(summary["checkpoint"]).parent / "latest").read_text() == Path(summary["checkpoint"]).name


DDP_SCRIPT = r"""
import sys, torch
sys.path.insert(0, {tests!r})
from conftest import tiny_config
from pathlib import Path
from lvr_trainer.train.sft import run_sft
cfg = tiny_config(Path({data!r}), Path({out!r}), train={{"steps": 2, "batch_size": {bs}, "torch_threads": 1}},
                  optim={{"lr": 0.01, "warmup_steps": 0, "grad_clip": 1000.0}},
                  parallel={{"strategy": {strategy!r}, "sequence_parallel": {sp}}})
summary = run_sft(cfg)
import torch.distributed as dist
if not dist.is_initialized() or dist.get_rank() == 0:
    print("LOSSES", summary["losses"])
from lvr_trainer.parallel.world import leave_world
leave_world()     # as `lvr rl|sft` ends: every rank leaves its process groups together
"""


def _run_script(tmp_path, tiny_data, name, nproc, bs, strategy="ddp", sp=1):
    out = tmp_path / name
    script = tmp_path / f"{name}.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), data=str(tiny_data), out=str(out),
                                        bs=bs, strategy=strategy, sp=sp))
    cmd = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
            str(script)] if nproc > 1 else [sys.executable, str(script)])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    losses = eval(next(l for l in res.stdout.splitlines() if l.startswith("LOSSES"))[7:])
    return losses, out / "run/checkpoints/step-000002/model"


@pytest.mark.distributed
@pytest.mark.parametrize("strategy,sp", [("ddp", 1), ("fsdp", 1), ("ddp", 2)])
def test_data_parallel_update_equals_single_process(tmp_path, tiny_data, strategy, sp, assert_same_update):
    """Same losses, and weights after 2 AdamW steps equal up to float summation order (see
    `assert_same_update` in conftest)."""
    one, one_dir = _run_script(tmp_path, tiny_data, "one", nproc=1, bs=4)
    # DP=2: two ranks of 2 samples; SP=2: one sequence-parallel group holding all 4 samples.
    two, two_dir = _run_script(tmp_path, tiny_data, "two", nproc=2, bs=4 if sp == 2 else 2, strategy=strategy, sp=sp)
    assert two == pytest.approx(one, abs=1e-5)
    assert_same_update(one_dir, two_dir)


def test_s3_output_uploads_checkpoints_and_resumes_from_them(make_config, s3_server, monkeypatch, tmp_path):
    from minio import Minio

    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("LVR_STAGING_DIR", str(tmp_path / "staging-a"))
    uri = f"s3://{s3_server.bucket}/runs/sft-s3"
    cfg = make_config(train={"steps": 3, "save_every": 2}, output={"dir": uri})
    first = run_sft(cfg, stop_after=2)
    client = Minio(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, secure=False)
    names = {o.object_name for o in client.list_objects(s3_server.bucket, prefix="runs/sft-s3/", recursive=True)}
    assert "runs/sft-s3/checkpoints/latest" in names
    assert "runs/sft-s3/checkpoints/step-000002/model/config.json" in names
    assert "runs/sft-s3/checkpoints/step-000002/trainer_state.pt" in names
    # a new machine: empty staging directory, resume pulls the latest checkpoint from S3
    monkeypatch.setenv("LVR_STAGING_DIR", str(tmp_path / "staging-b"))
    second = run_sft(cfg, resume=True)
    assert first["steps"] == 2 and second["start_step"] == 2 and second["steps"] == 3
    latest = client.get_object(s3_server.bucket, "runs/sft-s3/checkpoints/latest").read().decode()
    assert latest == "step-000003"


def _final_weights(summary):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(str(Path(summary["checkpoint"]) / "model")).state_dict()


def test_grad_accumulation_equals_one_larger_batch(make_config, tmp_path):
    big = run_sft(make_config(train={"steps": 2, "batch_size": 4}, output={"dir": str(tmp_path / "big")}))
    acc = run_sft(make_config(train={"steps": 2, "batch_size": 2, "grad_accum": 2},
                              output={"dir": str(tmp_path / "acc")}))
    assert acc["losses"] == pytest.approx(big["losses"], abs=1e-5)
    w_big, w_acc = _final_weights(big), _final_weights(acc)
    assert max((w_big[k] - w_acc[k]).abs().max().item() for k in w_big) < 1e-4


def test_trainable_vision_tower_trains_and_bypasses_the_cache(make_config, tmp_path):
    cfg = make_config(model={"freeze_vision": False}, train={"steps": 2})
    initial, _, _ = load_policy(make_config().model, torch.device("cpu"))
    summary = run_sft(cfg)
    after = _final_weights(summary)
    visual = [k for k in after if "visual" in k]
    assert visual and any(not torch.equal(after[k], initial.state_dict()[k]) for k in visual)
    assert summary["vision_passes"] == 0  # no cached encode: the tower ran inside the training step
    assert not any((tmp_path / "cache").rglob("*.safetensors"))
