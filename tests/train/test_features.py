"""VideoFeatureSource keeps embeddings in host memory, bounded by bytes (issue 22: was 100k videos, on GPU)."""

from __future__ import annotations

from lvr_trainer.config import FrameSampling, ModelConfig
from lvr_trainer.data.schema import read_records
from lvr_trainer.model.loading import load_model
from lvr_trainer.model.processor import VideoProcessor
from lvr_trainer.inputs.features import VideoFeatureSource


def test_memory_is_bounded_by_bytes_least_recently_used_first(tiny_data):
    model, _ = load_model(ModelConfig(preset="tiny", tokenizer="tiny"))
    records, _ = read_records(tiny_data / "train.jsonl")
    videos = list({r.video: r for r in records}.values())[:3]
    sampling = FrameSampling(num_frames=8, max_pixels=3136, min_pixels=784)
    probe = VideoFeatureSource(model, VideoProcessor.from_model_config(model.config), sampling, tiny_data)
    one = probe(videos[0]).embeds
    size = one.numel() * one.element_size()
    source = VideoFeatureSource(model, VideoProcessor.from_model_config(model.config), sampling, tiny_data,
                                memory_bytes=2 * size)
    for r in videos:
        assert source(r).embeds.device.type == "cpu"
    assert source.held_bytes == 2 * size and source.vision_passes == 3
    source(videos[2])                      # still held: a memory hit
    assert source.memory_hits == 1 and source.vision_passes == 3
    source(videos[0])                      # evicted first (least recently used): encoded again
    assert source.vision_passes == 4 and source.held_bytes <= 2 * size
