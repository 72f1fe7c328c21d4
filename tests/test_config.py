import pytest

from lvr_trainer.config import ConfigError, FrameSampling, TrainerConfig, load_config

VALID = """
model: {preset: tiny}
data:
  train: data/train.jsonl
  sampling: {num_frames: 16, max_pixels: 3136}
train: {steps: 10, batch_size: 2}
optim: {lr: 0.001, warmup_steps: 2}
"""


def write(tmp_path, text):
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_valid_config_loads_with_defaults(tmp_path):
    cfg = load_config(write(tmp_path, VALID))
    assert isinstance(cfg, TrainerConfig)
    assert cfg.data.sampling.num_frames == 16 and cfg.optim.lr == 1e-3
    assert cfg.parallel.sequence_parallel == 1 and cfg.cache.enabled


def test_unknown_key_names_key_file_and_suggests(tmp_path):
    path = write(tmp_path, VALID.replace("lr: 0.001", "learning_rat: 0.001"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg and "'optim.learning_rat'" in msg and "unknown key" in msg


def test_unknown_key_suggests_a_close_name(tmp_path):
    with pytest.raises(ConfigError, match=r"did you mean 'num_frames'"):
        load_config(write(tmp_path, VALID.replace("num_frames: 16", "num_frame: 16")))


def test_ill_typed_value_names_the_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, VALID.replace("steps: 10", "steps: ten")))
    assert "'train.steps'" in str(info.value) and "'ten'" in str(info.value)


def test_missing_section_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="'data': required key is missing"):
        load_config(write(tmp_path, VALID.replace("data:\n  train: data/train.jsonl\n  sampling: {num_frames: 16, "
                                                  "max_pixels: 3136}\n", "")))
    assert load_config(write(tmp_path, VALID.replace("train: {steps: 10, batch_size: 2}", ""))).train.steps == 1000
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_cross_field_rules_explain_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="exactly one of `path`"):
        load_config(write(tmp_path, VALID.replace("{preset: tiny}", "{preset: tiny, path: /m}")))
    with pytest.raises(ValueError, match="min_pixels"):
        FrameSampling(min_pixels=10_000, max_pixels=5_000)


def test_config_is_importable_without_torch():
    import subprocess
    import sys
    code = "import sys, lvr_trainer.config, lvr_trainer.data.schema; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
