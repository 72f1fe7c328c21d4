"""The shared-prefix sampler: one prefill per prompt for its n samples, log-probs taken as sampled, one
random stream per request; greedy replies equal transformers' own `generate`."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lvr_trainer.config import FrameSampling, ModelConfig
from lvr_trainer.data.schema import read_records
from lvr_trainer.inputs.examples import request_for
from lvr_trainer.model.encode import cached_video_kwargs
from lvr_trainer.model.loading import load_model
from lvr_trainer.model.processor import VideoProcessor
from lvr_trainer.model.prompt import rope_positions
from lvr_trainer.rollout.base import SamplingParams
from lvr_trainer.rollout.hf import TransformersEngine, left_pad
from lvr_trainer.rollout.shared_prefix import top_p_filter
from lvr_trainer.inputs.features import VideoFeatureSource


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from lvr_trainer.data.synth import SynthSpec, synthesise

    out = tmp_path_factory.mktemp("shared-prefix")
    synthesise(out, SynthSpec(videos=3, seconds=8, fps=4, width=56, height=56, seed=12))
    model, tok = load_model(ModelConfig(preset="tiny", tokenizer="tiny", dtype="float32"))
    with torch.no_grad():          # larger weights: varied greedy replies, not one token repeated
        g = torch.Generator().manual_seed(0)
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "visual" not in name:
                p.normal_(0.0, 0.2, generator=g)
    records, _ = read_records(out / "train.jsonl")
    source = VideoFeatureSource(model, VideoProcessor.from_model_config(model.config),
                                FrameSampling(num_frames=8, max_pixels=3136, min_pixels=784), out)
    reqs = [request_for(model, tok, r, source, think=True) for r in records[:4]]
    assert len({len(r.input_ids) for r in reqs}) > 1          # different lengths: left padding is exercised
    return model, tok, reqs


def hf_generate_greedy(model, tok, reqs, engine, max_new_tokens):
    """transformers' `generate` on the same inputs: the reference the sampler must equal."""
    ids = left_pad([r.input_ids for r in reqs], tok.pad_token_id)
    mask = left_pad([torch.ones_like(r.input_ids) for r in reqs], 0)
    mm = left_pad([r.mm_token_type_ids for r in reqs], 0)
    grid = torch.cat([r.video_grid_thw for r in reqs])
    embeds = torch.cat([r.video_embeds for r in reqs])
    out = model.generate(input_ids=ids, attention_mask=mask, mm_token_type_ids=mm, video_grid_thw=grid,
                         second_per_grid_ts=torch.tensor([r.second_per_grid_t for r in reqs]),
                         **cached_video_kwargs(embeds, grid), do_sample=False, max_new_tokens=max_new_tokens,
                         suppress_tokens=engine.suppress, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)
    rows = []
    for row in out[:, ids.shape[1]:].tolist():
        end = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
        rows.append(row[:end])
    return rows


def prefill_logprobs(model, req, reply, temperature):
    """The trainer's view: a forward over prompt + reply, positions from rope_positions."""
    ids = torch.cat([req.input_ids, torch.tensor(reply)])[None]
    mm = torch.cat([req.mm_token_type_ids, torch.zeros(len(reply), dtype=torch.long)])[None]
    pos, _ = rope_positions(model, ids, mm, req.video_grid_thw, torch.tensor([req.second_per_grid_t]))
    with torch.no_grad():
        logits = model(input_ids=ids, mm_token_type_ids=mm, video_grid_thw=req.video_grid_thw, position_ids=pos,
                       **cached_video_kwargs(req.video_embeds, req.video_grid_thw)).logits[0].float()
    s = len(req.input_ids)
    lp = (logits[s - 1:-1] / temperature).log_softmax(-1)
    return lp.gather(-1, torch.tensor(reply)[:, None])[:, 0]


def test_greedy_replies_equal_transformers_generate(setup):
    model, tok, reqs = setup
    engine = TransformersEngine(model, tok, batch_size=16)
    got = [g[0].token_ids for g in engine.generate(reqs, SamplingParams(n=1, temperature=0, max_new_tokens=16))]
    assert got == hf_generate_greedy(model, tok, reqs, engine, 16)
    assert len({tuple(r) for r in got}) > 1 and any(len(set(r)) > 4 for r in got)


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_sampled_logprobs_are_the_trainers_prefill_logprobs(setup, temperature, top_p):
    model, tok, reqs = setup
    groups = TransformersEngine(model, tok, batch_size=16).generate(
        reqs, SamplingParams(n=4, temperature=temperature, top_p=top_p, max_new_tokens=12, seed=3))
    worst = 0.0
    for req, group in zip(reqs, groups):
        assert len({tuple(r.token_ids) for r in group}) > 1                 # n samples, not copies
        for r in group:
            worst = max(worst, (torch.tensor(r.logprobs) - prefill_logprobs(model, req, r.token_ids,
                                                                             temperature)).abs().max().item())
            assert r.finished == (r.token_ids[-1] == tok.eos_token_id)
    assert worst < 1e-4, worst


def test_each_prompt_is_prefilled_once_and_its_kv_cache_is_shared_by_its_samples(setup, monkeypatch):
    """The language model sees the P prompts once (batch P), then one new token per sample per step, as one
    row per prompt; the KV cache holds each prompt once plus the samples' tokens (S + 8 x steps per row, P rows),
    not a copy per sample (P x 8 rows of S + steps)."""
    import lvr_trainer.parallel.ulysses as ulysses

    model, tok, reqs = setup
    shapes, caches = [], []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, args, kwargs: shapes.append(tuple((kwargs.get("inputs_embeds") if kwargs.get("inputs_embeds")
                                                     is not None else kwargs["input_ids"]).shape[:2])),
        with_kwargs=True)
    decode = ulysses.shared_prefix_decode_attention
    monkeypatch.setattr(ulysses, "shared_prefix_decode_attention",
                        lambda q, k, v, *a, **kw: caches.append(tuple(k.shape)) or decode(q, k, v, *a, **kw))
    try:
        TransformersEngine(model, tok, batch_size=64).generate(
            reqs, SamplingParams(n=8, temperature=1.0, max_new_tokens=6, seed=1))
    finally:
        hook.remove()
    longest = max(len(r.input_ids) for r in reqs)
    assert shapes[0] == (len(reqs), longest)                      # one prefill: P rows, not P x 8
    assert len(shapes) > 2 and all(s == (len(reqs), 8) for s in shapes[1:])    # 8 tokens per prompt per step
    layers = model.config.text_config.num_hidden_layers
    steps = len(shapes) - 1
    assert len(caches) == steps * layers
    assert caches[-1][0] == len(reqs) and caches[-1][2] == longest + 8 * steps  # the prompt once, then replies


def test_each_requests_replies_come_from_its_own_stream_whatever_shares_its_call(setup):
    """Request i samples from `seed + i * n` (the engines' contract): the same prompt twice in one call gets
    different replies, a call is reproducible, and splitting a call (other batches, other callers, each
    part seeded as its place in the whole, as SP ranks do) changes no reply."""
    model, tok, reqs = setup
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=10, seed=9)
    whole = TransformersEngine(model, tok, batch_size=8).generate([reqs[0], reqs[1]], params)   # one batch
    one_by_one = TransformersEngine(model, tok, batch_size=4)                                   # a prompt each
    parts = (one_by_one.generate([reqs[0]], params)
             + one_by_one.generate([reqs[1]], dataclasses.replace(params, seed=params.seed + params.n)))
    assert [[r.token_ids for r in g] for g in whole] == [[r.token_ids for r in g] for g in parts]
    for g, h in zip(whole, parts):
        for r, q in zip(g, h):
            assert r.logprobs == pytest.approx(q.logprobs, abs=1e-5)
    twice = one_by_one.generate([reqs[0], reqs[0]], params)
    assert [r.token_ids for r in twice[0]] != [r.token_ids for r in twice[1]]
    assert [r.token_ids for r in twice[0]] == [r.token_ids for r in whole[0]]


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = top_p_filter(logits, 0.75).isfinite()[0].tolist()
    assert kept == [True, True, False, False]                    # 0.5 + 0.3 >= 0.75
    assert top_p_filter(logits, 0.4).isfinite()[0].tolist() == [True, False, False, False]
    assert top_p_filter(logits, 1.0).isfinite().all()
