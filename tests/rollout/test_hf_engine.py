"""TransformersEngine: rollouts sample exactly what the trainer's prefill computes."""

from __future__ import annotations

import pytest
import torch

from lvr_trainer.config import FrameSampling, ModelConfig
from lvr_trainer.data.schema import read_records
from lvr_trainer.inputs.examples import request_for
from lvr_trainer.model.loading import load_model
from lvr_trainer.model.processor import VideoProcessor
from lvr_trainer.rollout.base import SamplingParams
from lvr_trainer.rollout.hf import TransformersEngine
from lvr_trainer.inputs.features import VideoFeatureSource


@pytest.fixture(scope="module")
def requests(tmp_path_factory):
    from lvr_trainer.data.synth import SynthSpec, synthesise

    out = tmp_path_factory.mktemp("engine-data")
    synthesise(out, SynthSpec(videos=2, seconds=8, fps=4, width=56, height=56, seed=11))
    model, tok = load_model(ModelConfig(preset="tiny", tokenizer="tiny"))
    records, _ = read_records(out / "train.jsonl")
    source = VideoFeatureSource(model, VideoProcessor.from_model_config(model.config),
                                FrameSampling(num_frames=8, max_pixels=3136, min_pixels=784), out)
    return model, tok, [request_for(model, tok, r, source, think=True) for r in records[:2]]


@pytest.mark.parametrize("params", [SamplingParams(n=1, temperature=0, max_new_tokens=16),
                                    SamplingParams(n=3, temperature=1.0, max_new_tokens=16, seed=4)])
def test_a_checkpoints_generation_config_does_not_leak_into_rollouts(requests, params):
    """A saved generation_config.json (repetition penalty, no-repeat n-grams, top_k) changes nothing."""
    model, tok, reqs = requests
    engine = TransformersEngine(model, tok, batch_size=8)
    before = engine.generate(reqs, params)
    saved = model.generation_config
    model.generation_config = type(saved)(repetition_penalty=5.0, no_repeat_ngram_size=1, top_k=2, min_new_tokens=8)
    try:
        after = engine.generate(reqs, params)
    finally:
        model.generation_config = saved
    assert [[r.token_ids for r in g] for g in after] == [[r.token_ids for r in g] for g in before]
    assert any(len(set(r.token_ids)) < len(r.token_ids) for g in before for r in g)   # repeats exist to forbid
    assert model.generation_config is saved
    flat = [lp for g in after for r in g for lp in r.logprobs]
    assert torch.isfinite(torch.tensor(flat)).all()
