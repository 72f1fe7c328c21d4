"""VideoEmbedder on real H.264 files: a hit decodes nothing and runs no vision pass."""

from __future__ import annotations

import json

import pytest
import torch

from lvr_trainer.cache.embedder import VideoEmbedder
from lvr_trainer.cache.front import EmbeddingCache
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
