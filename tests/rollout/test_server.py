"""`lvr rollout-server` (a real subprocess, as the sidecar runs it) and `RemoteRolloutEngine`: the same
replies as the engine in process, weight versions that never let a stale reply through, 4xx for bad
requests without dying, and a dead or hung server reported within the timeout."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests
import torch
import yaml

from lvr_trainer.config import FrameSampling, ModelConfig
from lvr_trainer.data.schema import read_records
from lvr_trainer.inputs.examples import request_for
from lvr_trainer.model.loading import load_model
from lvr_trainer.model.processor import VideoProcessor
from lvr_trainer.rollout.base import SamplingParams
from lvr_trainer.rollout.hf import TransformersEngine
from lvr_trainer.rollout.client import RemoteRolloutEngine, RolloutServerError, StaleWeights
from lvr_trainer.rollout.weights import policy_tensors, unshared_cpu
from lvr_trainer.rollout.wire import encode_generate, encode_weights
from lvr_trainer.inputs.features import VideoFeatureSource

GREEDY = SamplingParams(n=1, temperature=0, max_new_tokens=12)
SAMPLED = SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(config: str, port: int, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "lvr_trainer.cli", "rollout-server", "--config", config,
                             "--port", str(port), *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    RemoteRolloutEngine(f"http://127.0.0.1:{port}").wait_ready(120, poll_s=0.3)
    return proc


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """An in-process tiny policy, the same preset served by a subprocess, and two prompts' requests."""
    from lvr_trainer.data.synth import SynthSpec, synthesise

    out = tmp_path_factory.mktemp("server")
    synthesise(out, SynthSpec(videos=2, seconds=8, fps=4, width=56, height=56, seed=11))
    model_cfg = ModelConfig(preset="tiny", tokenizer="tiny", dtype="float32")
    model, tok = load_model(model_cfg)
    perturb(model, std=0.2, seed=0, redraw=True)    # varied replies (at the preset's init they repeat one token)
    records, _ = read_records(out / "train.jsonl")
    source = VideoFeatureSource(model, VideoProcessor.from_model_config(model.config),
                                FrameSampling(num_frames=8, max_pixels=3136, min_pixels=784), out)
    reqs = [request_for(model, tok, r, source, think=True) for r in records[:2]]
    config = out / "trainer.yaml"
    config.write_text(yaml.safe_dump({"model": model_cfg.model_dump(exclude_none=True),
                                      "data": {"train": str(out / "train.jsonl")}, "output": {"dir": str(out)}}))
    port = free_port()
    proc = start_server(str(config), port)
    RemoteRolloutEngine(f"http://127.0.0.1:{port}").sync_weights(model)      # the server: version 1
    yield model, tok, reqs, f"http://127.0.0.1:{port}", proc, str(config)
    proc.kill()
    proc.wait()


def perturb(model, std: float, seed: int, redraw: bool = False) -> None:
    """Move (or re-draw) the language model's matrices with a seeded generator: reproducible whatever
    ran before in this process."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "visual" not in name:
                noise = torch.randn(p.shape, generator=g) * std
                p.copy_(noise) if redraw else p.add_(noise)


def ids(groups):
    return [[r.token_ids for r in g] for g in groups]


def test_server_replies_equal_the_in_process_engine_before_and_after_a_weight_update(setup):
    model, tok, reqs, url, _, _ = setup
    local = TransformersEngine(model, tok, batch_size=8)
    remote = RemoteRolloutEngine(url)
    remote.wait_ready(10)
    for params in (GREEDY, SAMPLED):
        here, there = local.generate(reqs, params), remote.generate(reqs, params)
        assert ids(there) == ids(here)
        lp_here = torch.tensor([x for g in here for r in g for x in r.logprobs])
        lp_there = torch.tensor([x for g in there for r in g for x in r.logprobs])
        assert torch.allclose(lp_here, lp_there, atol=1e-5)
    before = ids(local.generate(reqs, GREEDY))
    perturb(model, std=0.1, seed=1)           # an "optimizer step": the weights move
    v0 = remote.weight_version
    remote.sync_weights(model)
    assert remote.weight_version == v0 + 1
    after_here, after_there = ids(local.generate(reqs, GREEDY)), ids(remote.generate(reqs, GREEDY))
    assert after_here != before and len({t for g in after_here for r in g for t in r}) > 4   # the update changed it
    assert after_there == after_here            # ... and the server says the same
    assert f"lvr_rollout_weight_version {v0 + 1}" in remote.metrics()


@pytest.mark.parametrize("transfer", ["http", "shared"])
def test_bucketed_syncs_over_http_or_a_shared_volume_serve_the_trainers_replies(setup, transfer):
    model, tok, reqs, url, _, _ = setup
    perturb(model, std=0.1, seed=3)
    remote = RemoteRolloutEngine(url, bucket_bytes=64 << 10, transfer=transfer)
    remote.wait_ready(10)
    remote.sync_weights(model)
    assert remote.last_transfer == transfer
    assert ids(remote.generate(reqs, SAMPLED)) == ids(TransformersEngine(model, tok).generate(reqs, SAMPLED))


def test_a_reply_from_other_weights_is_an_error_never_used(setup):
    model, _, reqs, url, _, _ = setup
    current = RemoteRolloutEngine(url)
    current.wait_ready(10)
    current.sync_weights(model)                 # the server moves on to a newer version
    stale = RemoteRolloutEngine(url)
    stale.weight_version = current.weight_version - 1
    with pytest.raises(StaleWeights, match=f"expects weight version {stale.weight_version}"):
        stale.generate(reqs, GREEDY)
    # versions only go up: re-pushing an older one is refused, and the server keeps the newer weights
    stale.weight_version = current.weight_version - 2
    with pytest.raises(StaleWeights, match="not newer"):
        stale.sync_weights(model)
    assert current.health()["weight_version"] == current.weight_version


def test_bad_requests_get_4xx_naming_the_problem_and_the_server_lives_on(setup):
    model, _, reqs, url, _, _ = setup
    post = lambda path, data: requests.post(url + path, data=data, timeout=30)  # noqa: E731
    r = post("/generate", b"not safetensors")
    assert r.status_code == 400 and "not safetensors" in r.json()["error"]
    bad = reqs[0].__class__(reqs[0].input_ids, reqs[0].mm_token_type_ids[:-1], reqs[0].video_embeds,
                            reqs[0].video_grid_thw)
    r = post("/generate", encode_generate([bad], GREEDY, RemoteRolloutEngine(url).health()["weight_version"]))
    assert r.status_code == 400 and "mm_token_type_ids" in r.json()["error"]
    version = RemoteRolloutEngine(url).health()["weight_version"]
    r = post("/weights", encode_weights([("model.no_such.weight", torch.zeros(2))], version + 1))
    assert r.status_code == 400 and "model.no_such.weight" in r.json()["error"]
    name, t = next(iter(policy_tensors(model)))
    r = post("/weights", encode_weights([(name, torch.zeros(t.shape[0] + 1))], version + 1))
    assert r.status_code == 400 and name in r.json()["error"]
    r = requests.post(url + "/weights", json={"path": "/nonexistent/weights", "weight_version": version + 1},
                      timeout=30)
    assert r.status_code == 400 and "no safetensors file" in r.json()["error"]
    health = RemoteRolloutEngine(url).health()
    assert (health["status"], health["weight_version"]) == ("ok", version)
    metrics = RemoteRolloutEngine(url).metrics()
    assert 'lvr_rollout_errors_total{code="400"}' in metrics


def test_weights_from_a_shared_path(setup, tmp_path):
    from safetensors.torch import save_file

    model, tok, reqs, url, _, _ = setup
    perturb(model, std=0.1, seed=2)
    save_file(unshared_cpu(policy_tensors(model)), tmp_path / "model.safetensors")
    remote = RemoteRolloutEngine(url)
    remote.wait_ready(10)
    remote.load_weights_from_path(str(tmp_path))
    assert ids(remote.generate(reqs, GREEDY)) == ids(TransformersEngine(model, tok).generate(reqs, GREEDY))


def test_a_dead_or_hung_server_is_an_error_within_the_timeout(setup):
    _, _, reqs, _, _, config = setup
    port = free_port()
    proc = start_server(config, port)
    try:
        client = RemoteRolloutEngine(f"http://127.0.0.1:{port}", request_timeout_s=3, retries=2, backoff_s=0.2)
        client.generate(reqs, GREEDY)
        os.kill(proc.pid, signal.SIGSTOP)               # hung: the socket accepts, nothing answers
        t0 = time.monotonic()
        with pytest.raises(RolloutServerError, match="did not answer POST /generate within 3 s"):
            client.generate(reqs, GREEDY)
        assert time.monotonic() - t0 < 10
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()                                      # dead: the port refuses connections
        proc.wait()
        t0 = time.monotonic()
        with pytest.raises(RolloutServerError, match="unreachable .*3 attempt"):
            client.generate(reqs, GREEDY)
        assert time.monotonic() - t0 < 10
        with pytest.raises(RolloutServerError, match="not ready after 1 s"):
            client.wait_ready(1, poll_s=0.2)
    finally:
        proc.kill()


def test_shutdown_ends_the_server(setup):
    _, _, _, _, _, config = setup
    port = free_port()
    proc = start_server(config, port)
    RemoteRolloutEngine(f"http://127.0.0.1:{port}").shutdown()
    assert proc.wait(timeout=30) == 0
    assert "serving on http://127.0.0.1" in proc.stdout.read()


def test_a_draining_sidecar_outlives_sigterm_until_the_trainer_shuts_it_down(setup):
    """A sidecar that is a regular container gets SIGTERM together with the trainer (a deleted pod): with
    --drain-on-sigterm it keeps serving the trainer's last step, then ends on its /shutdown; without, SIGTERM
    ends it."""
    import signal
    import time

    model, _, reqs, _, _, config = setup
    port = free_port()
    proc = start_server(config, port, "--drain-on-sigterm")
    remote = RemoteRolloutEngine(f"http://127.0.0.1:{port}")
    proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert proc.poll() is None
    remote.sync_weights(model)
    assert len(remote.generate(reqs[:1], GREEDY)[0][0].token_ids) > 0      # still serving after SIGTERM
    remote.shutdown()
    assert proc.wait(timeout=30) == 0
    assert "SIGTERM: serving on until the trainer's POST /shutdown" in proc.stdout.read()
    # a trainer that was killed never sends /shutdown: the drain ends on its own
    proc = start_server(config, free_port(), "--drain-on-sigterm", "--drain-timeout-s", "2")
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    assert proc.wait(timeout=30) == 0 and time.monotonic() - t0 < 10
    plain = start_server(config, free_port())
    plain.send_signal(signal.SIGTERM)
    assert plain.wait(timeout=30) in (0, -signal.SIGTERM)    # uvicorn shuts down, then re-raises the signal
