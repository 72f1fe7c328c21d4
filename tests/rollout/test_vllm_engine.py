"""VllmEngine: vLLM in process samples what TransformersEngine samples and reports the log-probs the
trainer's prefill computes, from the same cached video embeddings, before and after a weight sync.

Needs the vLLM venv: `make vllm-venv`, then `.venv-vllm/bin/python -m pytest -m vllm tests/rollout/test_vllm_engine.py`.
One engine serves the module (vLLM's start-up takes ~15-20 s on 2 cores).
"""

from __future__ import annotations

import builtins
import importlib.util

import pytest
import torch

from lvr_trainer.config import FrameSampling, ModelConfig
from lvr_trainer.data.schema import read_records
from lvr_trainer.inputs.examples import request_for
from lvr_trainer.model.encode import cached_video_kwargs
from lvr_trainer.model.loading import load_model
from lvr_trainer.model.processor import VideoProcessor
from lvr_trainer.rollout.base import SamplingParams
from lvr_trainer.rollout.hf import TransformersEngine
from lvr_trainer.inputs.features import VideoFeatureSource

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed here: build the vLLM venv with "
                                "`make vllm-venv` and run `.venv-vllm/bin/python -m pytest -m vllm`")
GREEDY = SamplingParams(n=1, temperature=0, max_new_tokens=16)


def spread_language_model(model, std: float = 0.2, seed: int = 0) -> None:
    """Re-draw the language model's matrices with a larger std: at the default init the logits are nearly
    flat and every greedy reply repeats one token, which would make "equal replies" a weak check."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "visual" not in name:
                p.normal_(0.0, std, generator=g)


def nudge_language_model(model, seed: int, std: float = 0.1) -> None:
    """An "optimizer step": seeded noise on every language-model weight."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "visual" not in name:
                p.add_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from lvr_trainer.data.synth import SynthSpec, synthesise
    from lvr_trainer.rollout.vllm_engine import VllmEngine

    data = tmp_path_factory.mktemp("vllm-data")
    synthesise(data, SynthSpec(videos=4, seconds=8, fps=4, width=112, height=112, seed=11))
    model, tok = load_model(ModelConfig(preset="tiny-vllm", tokenizer="tiny", dtype="float32"))
    spread_language_model(model)
    records, _ = read_records(data / "train.jsonl")
    processor = VideoProcessor.from_model_config(model.config)

    def requests_of(frames: int):
        source = VideoFeatureSource(model, processor, FrameSampling(num_frames=frames, max_pixels=112 * 112,
                                                                    min_pixels=784), data)
        return [request_for(model, tok, r, source, think=True) for r in records]

    # Two frames: one temporal patch (grid 1x8x8, 16 video tokens); eight frames: 4 patches (multi-patch test).
    requests = requests_of(2)
    engine = VllmEngine.from_model(model, tok, tmp_path_factory.mktemp("vllm-model"), dtype="float32",
                                   max_model_len=2048, seed=0)
    engine.multi_patch_requests = requests_of(8)  # grid 4x8x8
    yield model, tok, requests, engine
    del engine


def replies(groups) -> list[list[list[int]]]:
    return [[r.token_ids for r in g] for g in groups]


@torch.no_grad()
def prefill_log_softmax(model, request, reply: list[int], temperature: float) -> torch.Tensor:
    """(L, V) log_softmax(logits / T) at each reply position, from a transformers forward over prompt + reply
    with the cached embeddings: what the trainer's prefill computes (`lvr_trainer.train.sft.response_logprobs`)."""
    s = len(request.input_ids)
    ids = torch.cat([request.input_ids, torch.tensor(reply)])[None]                          # (1, S + L)
    mm = torch.cat([request.mm_token_type_ids, torch.zeros(len(reply), dtype=torch.long)])[None]
    logits = model(input_ids=ids, mm_token_type_ids=mm, video_grid_thw=request.video_grid_thw,
                   second_per_grid_ts=torch.tensor([request.second_per_grid_t]),
                   **cached_video_kwargs(request.video_embeds, request.video_grid_thw)).logits[0]
    return (logits[s - 1:-1].float() / temperature).log_softmax(-1)                       # (L, V)


def prefill_logprobs(model, request, reply: list[int], temperature: float) -> torch.Tensor:
    """(L,) the trainer's log-probs of `reply`."""
    lp = prefill_log_softmax(model, request, reply, temperature)
    return lp.gather(-1, torch.tensor(reply)[:, None])[:, 0]


@pytest.mark.vllm
@needs_vllm
def test_greedy_replies_equal_transformers_token_for_token(setup):
    model, tok, requests, engine = setup
    expected = TransformersEngine(model, tok).generate(requests, GREEDY)
    got = engine.generate(requests, GREEDY)
    assert replies(got) == replies(expected)
    assert len({tuple(g[0].token_ids) for g in got}) > 1            # the prompts' videos lead to different replies
    assert any(len(set(g[0].token_ids)) > 4 for g in got)           # not one token repeated
    for g_got, g_exp in zip(got, expected):
        # Greedy log-probs: log_softmax of the raw logits (temperature 0 scales nothing).
        assert torch.allclose(torch.tensor(g_got[0].logprobs), torch.tensor(g_exp[0].logprobs), atol=1e-3)
        assert g_got[0].finished == g_exp[0].finished and g_got[0].text == g_exp[0].text


@pytest.mark.vllm
@needs_vllm
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_equal_the_trainers_prefill(setup, temperature):
    """Sampled replies (n=4) and their reported log-probs against a transformers forward on prompt + reply."""
    model, _, requests, engine = setup
    params = SamplingParams(n=4, temperature=temperature, max_new_tokens=16, seed=3)
    groups = engine.generate(requests, params)
    assert [len(g) for g in groups] == [4] * len(requests)
    worst = 0.0
    for request, group in zip(requests, groups):
        assert len({tuple(r.token_ids) for r in group}) > 1           # n samples, not one copied
        for r in group:
            expected = prefill_logprobs(model, request, r.token_ids, temperature)
            worst = max(worst, (torch.tensor(r.logprobs) - expected).abs().max().item())
    # Both sides compute in float32 with different kernels (vLLM's CPU attention and fused ops vs
    # transformers' SDPA): measured max |diff| ~1e-5 here. A convention error (log-probs before the
    # temperature, or renormalised after suppressing tokens) moves them by 1e-2 or more.
    assert worst < 1e-3, f"max |vLLM - prefill| log-prob difference {worst:.2e}"
    print(f"\nT={temperature}: max |vLLM - prefill| log-prob = {worst:.2e}")
    assert engine.generate(requests[:1], params)[0][0].token_ids == groups[0][0].token_ids  # seeded


@pytest.mark.vllm
@needs_vllm
def test_vision_placeholders_are_never_sampled(setup):
    """Even when the model prefers them: bias the LM head toward the placeholders, sample many tokens."""
    model, tok, requests, engine = setup
    placeholders = sorted(engine.suppress)
    head = model.get_output_embeddings().weight                          # tied: the input embeddings too
    saved = head.detach().clone()
    with torch.no_grad():
        head[placeholders] *= 8.0
    engine.sync_weights(model)
    try:
        params = SamplingParams(n=4, temperature=1.5, max_new_tokens=32, seed=1)
        groups = engine.generate(requests, params)
        assert not {t for g in groups for r in g for t in r.token_ids} & set(placeholders)
        # The model did want them: under the unsuppressed distribution they carry real mass, and the
        # reported log-probs are still those of that distribution (not renormalised without them).
        reply = groups[0][0].token_ids
        lp = prefill_log_softmax(model, requests[0], reply, params.temperature)             # (L, V)
        assert lp[:, placeholders].exp().sum(-1).max() > 0.2
        expected = lp.gather(-1, torch.tensor(reply)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(groups[0][0].logprobs), expected, atol=1e-3)
    finally:
        with torch.no_grad():
            head.copy_(saved)
        engine.sync_weights(model)


@pytest.mark.vllm
@needs_vllm
def test_weight_sync_changes_replies_to_the_new_models(setup):
    """After noise on every weight and `sync_weights`, vLLM's greedy replies change and equal transformers'
    on the new weights, from the same embeddings re-sent (the encoder and prefix caches were reset)."""
    model, tok, requests, engine = setup
    before = replies(engine.generate(requests, GREEDY))
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        nudge_language_model(model, seed=7)
        engine.sync_weights(model)
        after = replies(engine.generate(requests, GREEDY))
        assert after != before
        assert after == replies(TransformersEngine(model, tok).generate(requests, GREEDY))
    finally:
        model.load_state_dict(saved)
        engine.sync_weights(model)
    assert replies(engine.generate(requests, GREEDY)) == before


@pytest.mark.vllm
@needs_vllm
def test_a_weight_set_of_another_architecture_is_refused_before_any_byte_loads(setup):
    """Names and shapes are checked against the transformers layout of vLLM's architecture first: a wrong set
    is an error naming the weight, and the engine's replies stay those of its weights."""
    model, tok, requests, engine = setup
    before = replies(engine.generate(requests, GREEDY))
    name, t = next((n, p) for n, p in model.named_parameters() if "visual" not in n)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        engine.load_weights([(name, torch.zeros(t.shape[0] + 1))])
    with pytest.raises(KeyError, match="model.no_such.weight"):
        engine.load_weights([(name, t.detach() * 0), ("model.no_such.weight", torch.zeros(2))])
    assert replies(engine.generate(requests, GREEDY)) == before
    assert engine.weight_shapes()[name] == tuple(t.shape)


@pytest.mark.vllm
@needs_vllm
def test_greedy_replies_and_logprobs_after_a_multi_patch_video(setup):
    """A video of several temporal patches: the text after it sits at the video's largest position + 1 in
    vLLM and (with `use_reference_positions`, model/prompt.py) in transformers. transformers 5.19-5.24 alone
    put it at video start + max(h, w) / merge, and this test failed before that correction."""
    model, tok, _, engine = setup
    requests = engine.multi_patch_requests
    assert int(requests[0].video_grid_thw[0, 0]) > 1
    got = engine.generate(requests, GREEDY)
    assert replies(got) == replies(TransformersEngine(model, tok).generate(requests, GREEDY))
    for request, group in zip(requests, got):
        expected = prefill_logprobs(model, request, group[0].token_ids, 1.0)
        assert (torch.tensor(group[0].logprobs) - expected).abs().max() < 1e-3


def test_without_vllm_construction_says_how_to_install(monkeypatch, tmp_path):
    """Importing the module works anywhere; constructing the engine without vLLM names `make vllm-venv`."""
    import sys

    from lvr_trainer.rollout import vllm_engine

    real_import = builtins.__import__

    def no_vllm(name, *args, **kwargs):
        if name == "vllm" or name.startswith("vllm."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    for key, value in vllm_engine.CPU_ENV.items():  # the engine sets these; undone after the test
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(builtins, "__import__", no_vllm)
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    with pytest.raises(ImportError, match="make vllm-venv"):
        vllm_engine.VllmEngine(tmp_path)


@pytest.mark.vllm
@needs_vllm
def test_vllm_behind_the_rollout_server_equals_transformers_before_and_after_updates(setup, tmp_path):
    """`lvr rollout-server --engine vllm` (a subprocess, as the sidecar runs it): the trainer's weights pushed
    over HTTP (version 1), greedy replies equal to transformers in process; then an update, pushed as
    version 2, and equal again; a reply for version 1 is refused."""
    import socket
    import subprocess
    import sys

    import yaml

    from lvr_trainer.rollout.client import RemoteRolloutEngine, StaleWeights

    model, tok, requests, _ = setup
    config = tmp_path / "trainer.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"preset": "tiny-vllm", "tokenizer": "tiny", "dtype": "float32"},
        "data": {"train": "unused.jsonl"}, "output": {"dir": str(tmp_path)},
        "rollout": {"engine": "vllm", "mode": "sidecar", "sidecar_url": "http://127.0.0.1:1", "max_model_len": 2048}}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "lvr_trainer.cli", "rollout-server", "--config", str(config),
                               "--port", str(port)])
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        remote = RemoteRolloutEngine(f"http://127.0.0.1:{port}", request_timeout_s=300)
        remote.wait_ready(300)
        remote.sync_weights(model)                              # the preset's init -> the spread weights
        assert remote.weight_version == 1
        local = TransformersEngine(model, tok)
        before = replies(remote.generate(requests, GREEDY))
        assert before == replies(local.generate(requests, GREEDY))
        nudge_language_model(model, seed=11)
        remote.sync_weights(model)
        after = replies(remote.generate(requests, GREEDY))
        assert after != before and after == replies(local.generate(requests, GREEDY))
        stale = RemoteRolloutEngine(remote.url)
        stale.weight_version = 1
        with pytest.raises(StaleWeights):
            stale.generate(requests, GREEDY)
        remote.shutdown()
        assert server.wait(timeout=60) == 0
    finally:
        server.kill()
        model.load_state_dict(saved)


@pytest.mark.vllm
@needs_vllm
def test_an_rl_run_with_vllm_in_process_samples_on_policy(tmp_path):
    """`rollout.engine: vllm` in `lvr rl`: 8-frame videos (several temporal patches), weights synced before
    every rollout; the engine's log-probs of its samples equal the trainer's prefill (rollout/logprob_gap,
    the mean |engine - prefill| over the step's reply tokens) and the policy moves."""
    from lvr_trainer.config import TrainerConfig
    from lvr_trainer.data.synth import SynthSpec, synthesise
    from lvr_trainer.train.rl import run_rl

    synthesise(tmp_path / "data", SynthSpec(videos=4, seconds=8, fps=4, width=56, height=56, seed=5))
    cfg = TrainerConfig.model_validate({
        "model": {"preset": "tiny-vllm", "tokenizer": "tiny"},
        "data": {"train": str(tmp_path / "data" / "train.jsonl"),
                 "sampling": {"num_frames": 8, "max_pixels": 3136, "min_pixels": 784}},
        "train": {"steps": 2, "batch_size": 2, "grad_accum": 1, "bf16": False, "torch_threads": 1},
        "optim": {"lr": 1e-2, "warmup_steps": 1}, "cache": {"uri": str(tmp_path / "cache")},
        "output": {"dir": str(tmp_path / "run"), "tensorboard": False},
        "rl": {"group_size": 4, "max_new_tokens": 12, "kl_coef": 0.0,
               "rewards": [{"name": "format", "weight": 1.0},
                           {"name": "lvr_trainer.algo.shaped_rewards:format_progress", "weight": 1.0}]},
        "rollout": {"engine": "vllm", "max_model_len": 1024}})
    summary = run_rl(cfg)
    assert summary["steps"] == 2
    for h in summary["history"]:
        assert h["rollout/logprob_gap"] < 1e-3, h["rollout/logprob_gap"]
        assert h["time/weight_sync"] > 0
    assert summary["history"][-1]["actor/grad_norm"] > 0
