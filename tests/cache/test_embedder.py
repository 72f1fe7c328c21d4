"""VideoEmbedder on real H.264 files: a hit decodes nothing and runs no vision pass."""

from __future__ import annotations

import json

import pytest
import torch

from lvr_trainer.cache.embedder import VideoEmbedder
from lvr_trainer.cache.embedding_cache import EmbeddingCache
from lvr_trainer.cache.local import LocalStore
from lvr_trainer.config import FrameSampling, ModelConfig
from lvr_trainer.data.synth import SynthSpec, synthesise


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth-embed")
    synthesise(out, SynthSpec(videos=2, seconds=8, fps=8, width=112, height=112, events=8, seed=3))
    return sorted(str(p) for p in (out / "videos").glob("*.mp4"))


@pytest.fixture(scope="module")
def model():
    from lvr_trainer.model.loading import load_model

    return load_model(ModelConfig(preset="tiny"))[0]


def _embedder(model, root, frames=8):
    from lvr_trainer.model.processor import VideoProcessor

    cache = EmbeddingCache(LocalStore(root))
    return VideoEmbedder(model, VideoProcessor.from_model_config(model.config), cache,
                         FrameSampling(num_frames=frames, max_pixels=112 * 112))


def test_second_embed_is_a_hit_without_decoding(model, videos, tmp_path, monkeypatch):
    first = _embedder(model, tmp_path).embed(videos[0])
    assert not first.hit and first.num_tokens == 4 * 4 * 4  # 8 frames of 112x112
    import lvr_trainer.data.video as video

    monkeypatch.setattr(video, "sample_frames", lambda *a, **k: pytest.fail("a hit must not decode"))
    again = _embedder(model, tmp_path)
    second = again.embed(videos[0])
    assert second.hit and second.key == first.key and again.cache.stats.vision_passes == 0
    assert torch.equal(second.embeds, first.embeds)
    assert second.second_per_grid_ts == pytest.approx(first.second_per_grid_ts)


def test_key_changes_with_frames_video_and_vision_weights(model, videos, tmp_path):
    from lvr_trainer.cache.embedder import plan_frames

    e8, e4 = _embedder(model, tmp_path), _embedder(model, tmp_path, frames=4)
    k = e8.key(videos[0], plan_frames(videos[0], e8.sampling))
    assert k != e4.key(videos[0], plan_frames(videos[0], e4.sampling))
    assert k != e8.key(videos[1], plan_frames(videos[1], e8.sampling))
    from lvr_trainer.model.loading import load_model

    tuned = load_model(ModelConfig(preset="tiny"))[0]
    with torch.no_grad():
        next(tuned.model.visual.parameters()).mul_(1.01)  # "fine-tuned" vision tower
    et = _embedder(tuned, tmp_path)
    assert et.key(videos[0], plan_frames(videos[0], et.sampling)) != k


def test_lvr_encode_cli(videos, tmp_path, capsys):
    from lvr_trainer.cli import main

    data = tmp_path / "d.jsonl"
    row = dict(question="q?", options={"A": "a", "B": "b", "C": "c", "D": "d"}, answer="A",
               category="temporal", duration=8.0)
    data.write_text("".join(json.dumps({**row, "id": f"q{i}", "video": v}) + "\n"
                            for i, v in enumerate(videos + videos[:1])))
    args = ["encode", "--data", str(data), "--cache", str(tmp_path / "c"), "--frames", "4", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["videos"], first["encoded"], first["hits"], first["tokens"]) == (2, 2, 0, 64)
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert (second["encoded"], second["hits"], second["hit_rate"]) == (0, 2, 1.0)


def _dataset(videos, path):
    row = dict(question="q?", options={"A": "a", "B": "b", "C": "c", "D": "d"}, answer="A",
               category="temporal", duration=8.0)
    path.write_text("".join(json.dumps({**row, "id": f"q{i}", "video": v}) + "\n" for i, v in enumerate(videos)))
    return path


def test_lvr_encode_reads_a_trainer_config(videos, tmp_path, capsys):
    import yaml

    from lvr_trainer.cli import main

    data = _dataset(videos, tmp_path / "d.jsonl")
    cfg = {"model": {"preset": "tiny"}, "data": {"train": str(data), "sampling": {"num_frames": 2}},
           "train": {"steps": 1}, "cache": {"uri": str(tmp_path / "cfg-cache")}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["encode", "--data", str(data), "--config", str(tmp_path / "c.yaml"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cache"] == str(tmp_path / "cfg-cache") and out["tokens"] == 2 * 16  # 2 frames: 1 group of 16


@pytest.mark.distributed
@pytest.mark.slow
def test_lvr_encode_under_torchrun_matches_single_process(videos, tmp_path):
    import os
    import subprocess
    import sys

    from lvr_trainer.cache.local import LocalStore

    data = _dataset(videos, tmp_path / "d.jsonl")
    base = ["encode", "--data", str(data), "--frames", "4", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "lvr_trainer.cli", *base, "--cache", str(tmp_path / "par")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert (summary["videos"], summary["encoded"]) == (2, 2)
    from lvr_trainer.cli import main

    assert main([*base, "--cache", str(tmp_path / "single")]) == 0
    par, single = LocalStore(tmp_path / "par"), LocalStore(tmp_path / "single")
    names = sorted(p.name for _, _, p in par.entries())
    assert names == sorted(p.name for _, _, p in single.entries()) and len(names) == 2
    from lvr_trainer.cache.payload import unpack

    for name in names:
        key = name.split(".")[0]
        a, b = unpack(key, par.get(key)), unpack(key, single.get(key))
        assert (a.embeds - b.embeds).abs().max().item() <= 1e-5
