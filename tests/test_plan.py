"""`lvr plan`: parameter counts from config.json equal the real models' (meta device), the paper's workload
(7B, 3,600 frames, 8 GPUs, G = 8) fits, a layout that cannot fit is refused with exit 3 and settings that fit,
and the JSON form carries the same numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from lvr_trainer.cli import main

from lvr_trainer.config import ModelConfig
from lvr_trainer.plan import GIB, checkpointing_by_default, parse_bytes, shape_from_config

PAPER = Path(__file__).parents[1] / "examples" / "plan" / "rl_7b_3600_frames.yaml"


@pytest.mark.parametrize("preset", ["tiny", "small", "tiny-qwen2-vl"])
def test_counts_from_the_config_equal_the_model(preset):
    from lvr_trainer.model.loading import load_model
    from lvr_trainer.parallel.memory import model_counts

    model, _ = load_model(ModelConfig(preset=preset), device="meta")
    shape, real = shape_from_config(model.config.to_dict()), model_counts(model)
    assert (shape.language_params, shape.vision_params) == (real.language, real.vision)


def test_counts_of_qwen25_vl_7b_from_its_config_json_equal_the_model():
    from transformers import AutoConfig, AutoModelForImageTextToText

    from lvr_trainer.parallel.memory import model_counts

    directory = PAPER.parent / "qwen2.5-vl-7b"
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(str(directory)))
    shape = shape_from_config(json.loads((directory / "config.json").read_text()))
    real = model_counts(model)
    assert (shape.language_params, shape.vision_params) == (real.language, real.vision) == (7_615_616_512,
                                                                                               676_550_144)


def test_the_papers_workload_fits_one_8_gpu_node(capsys):
    assert main(["plan", "--config", str(PAPER)]) == 0
    out = capsys.readouterr().out
    assert "259,200 video tokens" in out and "fits:" in out and "SP 4" in out


def _variant(tmp_path: Path, **changes) -> str:
    cfg = yaml.safe_load(PAPER.read_text())
    cfg["model"]["path"] = str(PAPER.parent / "qwen2.5-vl-7b")
    for key, value in changes.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_a_layout_that_cannot_fit_exits_3_naming_the_part_and_what_fits(tmp_path, capsys):
    whole = _variant(tmp_path, parallel={"strategy": "ddp", "sequence_parallel": 1})
    assert main(["plan", "--config", whole]) == 3
    out = capsys.readouterr().out
    assert "does not fit" in out and "the largest part is activations" in out
    assert "parallel.strategy: fsdp + parallel.sequence_parallel: 4 (together)" in out, out
    inprocess = _variant(tmp_path, rollout={"engine": "vllm", "mode": "inprocess", "sidecar_url": None,
                                            "gpu_memory_utilization": 0.5})
    assert main(["plan", "--config", inprocess, "--json"]) == 3
    plan = json.loads(capsys.readouterr().out)
    rollout = next(c for c in plan["components"] if c["name"] == "rollout")
    assert rollout["bytes"] == 40 * GIB                      # vLLM's half of the GPU
    assert any("mode: sidecar" in a for a in plan["advice"]) and not plan["fits"]
    assert plan["total_bytes"] == sum(c["bytes"] for c in plan["components"])


def test_the_transformers_rollout_holds_each_prompt_once_for_its_samples(tmp_path, capsys):
    """3,600 frames, G = 8 replies of 1,024 tokens: the KV cache is (259k + 1k text + 8 x 1k) tokens x 56 KiB,
    about 14.7 GiB, not 8 copies of the prompt's (118 GiB)."""
    inprocess = _variant(tmp_path, rollout={"engine": "transformers", "mode": "inprocess", "sidecar_url": None})
    assert main(["plan", "--config", inprocess, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    rollout = next(c for c in plan["components"] if c["name"] == "rollout")
    per_token = 2 * 28 * 4 * 128 * 2
    assert rollout["bytes"] == (259_200 + 256 + 8 * 1024) * per_token and rollout["bytes"] < 16 * GIB


def test_gpu_memory_amounts_and_the_checkpointing_default():
    assert parse_bytes("80GiB") == parse_bytes("80Gi") == 80 * 2 ** 30
    assert parse_bytes("80GB") == 80 * 10 ** 9 and parse_bytes("1024") == 1024
    with pytest.raises(ValueError, match="80GiB"):
        parse_bytes("eighty")
    from lvr_trainer.model.presets import PRESETS

    small = PRESETS["small"]
    assert not checkpointing_by_default(small.hidden, small.layers)
    assert checkpointing_by_default(3584, 28)


def test_vllm_max_model_len_comes_from_the_jobs_frames_and_replies():
    from lvr_trainer.config import load_config
    from lvr_trainer.planning import job_max_model_len

    cfg = load_config(str(PAPER))
    assert job_max_model_len(cfg) == 259_200 + 1_024 + 1_024          # above Qwen2.5-VL's own 128k
    assert job_max_model_len(cfg) > 128_000


def test_a_run_on_gpus_refuses_to_start_beyond_its_plan_with_exit_3_and_the_plans_verdict(tmp_path, monkeypatch):
    """The trainer's pre-flight (`train.run_start.check_memory_plan`, before any weight loads on GPUs): the paper's
    job on 40 GiB GPUs does not fit; `lvr rl` exits 3 and its termination message (what the operator's
    condition quotes) names the largest component and settings that fit. memory_check: warn starts anyway."""
    import lvr_trainer.train.rl as rl
    from lvr_trainer.config import load_config
    from lvr_trainer.parallel.grid import ProcessGrid, plan_grid
    from lvr_trainer.contracts.exits import DOES_NOT_FIT_MARK
    from lvr_trainer.plan import DoesNotFit
    from lvr_trainer.train.run_start import check_memory_plan

    small_gpus = _variant(tmp_path, parallel={"gpu_memory": "40GiB"})
    cfg = load_config(small_gpus)
    grid = ProcessGrid(rank=0, layout=plan_grid(8, 4), device="cuda")     # rank 0 of 8 GPUs, as torchrun gives
    with pytest.raises(DoesNotFit, match=f"{DOES_NOT_FIT_MARK}: the plan needs .* of 40.0 .*Would fit: .*"):
        check_memory_plan(cfg, "rl", grid)
    check_memory_plan(load_config(_variant(tmp_path, parallel={"gpu_memory": "80GiB"})), "rl", grid)   # fits
    warn = cfg.model_copy(update={"parallel": cfg.parallel.model_copy(update={"memory_check": "warn"})})
    check_memory_plan(warn, "rl", grid)                                                            # starts

    def run_on_gpus(cfg, resume=False, stop=None):    # what start_run does first on a GPU machine
        check_memory_plan(cfg, "rl", grid)
    monkeypatch.setattr(rl, "run_rl", run_on_gpus)
    log = tmp_path / "termination-log"
    monkeypatch.setenv("LVR_TERMINATION_LOG", str(log))
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert main(["rl", "--config", _variant(tmp_path, parallel={"gpu_memory": "40GiB"})]) == 3
    assert log.read_text().startswith(DOES_NOT_FIT_MARK) and "largest part is" in log.read_text()
