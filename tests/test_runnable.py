"""lvr_trainer.runnable: what `lvr sft|rl` refuses at start, and the operator at admission."""

from __future__ import annotations

import json

import pytest

from lvr_trainer.config import ConfigError, parse_config
from lvr_trainer.runnable import attention_heads, check_runnable, runnable_problems

BASE = {"model": {"preset": "tiny"}, "data": {"train": "s3://b/train.jsonl"}}


def cfg(**over):
    return parse_config({**BASE, **over})


def keys(c, **kw):
    return [p.key for p in runnable_problems(c, **kw)]


def test_a_plain_config_runs_on_documented_defaults():
    c = cfg()
    assert c.train.steps == 1000 and keys(c, stage="sft", world_size=8, heads=attention_heads(c.model)) == []


def test_fsdp_with_sequence_parallelism_runs():
    c = cfg(parallel={"strategy": "fsdp", "sequence_parallel": 2})
    assert keys(c, stage="sft", world_size=8, heads=attention_heads(c.model)) == []


def test_sequence_parallel_must_divide_processes_and_heads():
    c = cfg(parallel={"sequence_parallel": 3})
    problems = runnable_problems(c, stage="sft", world_size=8, heads=attention_heads(c.model))
    assert [p.key for p in problems] == ["parallel.sequence_parallel"] * 2
    assert "1, 2, 4, 8" in problems[0].message and "4 attention heads" in problems[1].message


@pytest.mark.parametrize("key,value", [("output", {"dir": "ftp://h/out"}), ("cache", {"uri": "gs://b/c"})])
def test_uri_schemes_the_trainer_cannot_use(key, value):
    (p,) = runnable_problems(cfg(**{key: value}), stage="sft")
    assert "not supported" in p.message and "s3://" in p.message


def test_rl_needs_an_rl_section_and_either_engine_runs():
    assert keys(cfg(), stage="rl") == ["rl"]
    c = cfg(rl={}, rollout={"engine": "vllm", "mode": "sidecar", "sidecar_url": "http://127.0.0.1:8000"})
    assert keys(c, stage="rl") == [] and keys(c, stage="sft") == []


def test_check_names_the_source_and_every_key():
    with pytest.raises(ConfigError, match=r"job.yaml: key 'parallel.sequence_parallel'.*\njob.yaml: key 'output.dir'"):
        check_runnable(cfg(parallel={"strategy": "fsdp", "sequence_parallel": 3}, output={"dir": "ftp://x"}),
                       stage="sft", source="job.yaml", world_size=2)


def test_attention_heads_from_a_local_model_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"num_attention_heads": 28}}))
    assert attention_heads(parse_config({**BASE, "model": {"path": str(tmp_path)}}).model) == 28
    assert attention_heads(parse_config({**BASE, "model": {"path": "s3://b/m"}}).model) is None


def test_reference_offload_needs_a_sharded_strategy():
    assert keys(cfg(rl={"reference_offload": True}), stage="rl") == ["rl.reference_offload"]
    assert keys(cfg(rl={"reference_offload": True}, parallel={"strategy": "hsdp"}), stage="rl") == []
