"""The rollout server's weight transfers and limits against a stand-in engine (no model, no subprocess): a
bucketed transfer lands whole or not at all, a client killed mid-body changes nothing, limits answer 4xx
and the server lives on, and a queued `/generate` is not timed out by the rollout ahead of it."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests
import torch

from lvr_trainer.rollout.base import Rollout, RolloutRequest, SamplingParams
from lvr_trainer.rollout.client import RemoteRolloutEngine, RolloutServerError, StaleWeights, _Transfer
from lvr_trainer.rollout.server import ServerLimits, create_app
from lvr_trainer.rollout.weights import gather_bucket, load_into, parameter_shapes, plan_transfer
from lvr_trainer.rollout.wire import encode_generate, encode_manifest, safetensors_chunks


class Policy(torch.nn.Module):
    """Named like a Qwen-VL: a language model (sent) and a vision tower (never sent)."""

    def __init__(self, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.model = torch.nn.Module()
        self.model.language_model = torch.nn.ModuleList(torch.nn.Linear(64, 64) for _ in range(4))
        self.model.visual = torch.nn.Linear(8, 8)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))


class StandInEngine:
    """A ServableEngine whose replies are a digest of its weights, after `delay_s` of "generation"."""

    def __init__(self, delay_s: float = 0.0):
        self.model, self.delay_s = Policy(seed=0), delay_s

    def weight_shapes(self):
        return parameter_shapes(self.model)

    def load_weights(self, named_tensors, checked: bool = False):
        load_into(self.model, named_tensors, checked=checked)

    def digest(self) -> int:
        return int(sum(p.double().sum() for n, p in self.model.named_parameters() if "visual" not in n) * 1e6)

    def generate(self, requests, params):
        time.sleep(self.delay_s)
        return [[Rollout([self.digest() % 1000], [0.0], "", True)] * params.n for _ in requests]

    def sync_weights(self, model):
        raise NotImplementedError


def serve_in_thread(engine, shared_dir=None, **limits):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(engine, limits=ServerLimits(**limits), shared_dir=shared_dir)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    RemoteRolloutEngine(url).wait_ready(30, poll_s=0.05)
    return url, server


@pytest.fixture
def served(tmp_path):
    engine = StandInEngine()
    url, server = serve_in_thread(engine, shared_dir=str(tmp_path), max_body_bytes=1 << 20, max_n=8, max_model_len=64, max_version_step=10)
    yield engine, url
    server.should_exit = True


REQUEST = RolloutRequest(torch.arange(10), torch.zeros(10, dtype=torch.long), torch.zeros(4, 8),
                         torch.tensor([[1, 2, 2]]))
ONE = SamplingParams(n=1, temperature=1.0, max_new_tokens=4, seed=0)


def language_model_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters())
               if "visual" not in n)


@pytest.mark.parametrize("transfer", ["http", "shared"])
def test_a_bucketed_transfer_sends_the_language_model_only_and_lands_whole(served, transfer):
    engine, url = served
    policy, vision_before = Policy(seed=1), engine.model.model.visual.weight.clone()
    client = RemoteRolloutEngine(url, bucket_bytes=20_000, transfer=transfer)
    client.wait_ready(5)
    assert len(plan_transfer(policy, None, 20_000)) > 2          # several buckets
    client.sync_weights(policy)
    assert client.last_transfer == transfer and client.weight_version == 1
    assert language_model_equal(engine.model, policy)
    assert torch.equal(engine.model.model.visual.weight, vision_before)      # the frozen tower never travels
    assert client.generate([REQUEST], ONE)[0][0].token_ids == [engine.digest() % 1000]


def test_bf16_buckets_halve_the_bytes_and_round_like_the_engine_would(served):
    engine, url = served
    policy = Policy(seed=2)
    client = RemoteRolloutEngine(url, weight_dtype=torch.bfloat16, transfer="http")
    client.wait_ready(5)
    client.sync_weights(policy)
    sent = sum(e.nbytes for b in plan_transfer(policy, torch.bfloat16, 1 << 30) for e in b)
    assert sent * 2 == sum(e.nbytes for b in plan_transfer(policy, None, 1 << 30) for e in b)
    assert f"lvr_rollout_weight_bytes_total {sent}" in client.metrics()
    for (n, p), (_, q) in zip(engine.model.named_parameters(), policy.named_parameters()):
        if "visual" not in n:
            assert torch.equal(p, q.to(torch.bfloat16).float())


def test_a_transfer_abandoned_or_cut_mid_body_leaves_the_old_version_whole_and_a_retry_lands(served):
    engine, url = served
    client = RemoteRolloutEngine(url, bucket_bytes=20_000, transfer="http")
    client.wait_ready(5)
    client.sync_weights(Policy(seed=3))
    before = Policy(seed=3)
    buckets = plan_transfer(Policy(seed=4), None, 20_000)
    # the trainer dies after two of its buckets: nothing reaches the engine
    half = _Transfer(client, 2, buckets)
    for k in range(2):
        half.send(k, gather_bucket(Policy(seed=4), buckets[k], keep=True))
    # ... and another dies in the middle of a bucket's body (the connection drops)
    cut = _Transfer(client, 2, buckets)

    def torn():
        yield next(iter(safetensors_chunks(gather_bucket(Policy(seed=4), buckets[0], keep=True))))
        raise ConnectionAbortedError("the trainer was killed")
    with pytest.raises(Exception):
        requests.put(f"{url}/weights/{cut.id}/0", data=torn(), timeout=10)
    assert client.health()["weight_version"] == 1 and client.health()["status"] == "ok"
    assert language_model_equal(engine.model, before)
    with pytest.raises(RolloutServerError, match="no weight transfer"):      # the abandoned one was replaced
        half.commit()
    client.sync_weights(Policy(seed=4))                                      # the restarted trainer's retry
    assert client.weight_version == 2 and language_model_equal(engine.model, Policy(seed=4))


def test_an_engine_failing_half_way_through_a_load_says_degraded_until_a_whole_transfer(served, tmp_path):
    engine, url = served
    client = RemoteRolloutEngine(url, bucket_bytes=20_000, transfer="http")
    client.wait_ready(5)
    original = engine.load_weights

    def fails_midway(named, checked=False):
        it = iter(named)
        load_into(engine.model, [next(it)], checked=True)       # one tensor lands, then the engine breaks
        raise RuntimeError("device lost")
    engine.load_weights = fails_midway
    with pytest.raises(RolloutServerError, match="device lost"):
        client.sync_weights(Policy(seed=5))
    assert client.health()["status"] == "degraded"
    with pytest.raises(RolloutServerError, match="HTTP 503.*push the trainer's weights again"):
        client.generate([REQUEST], ONE)
    engine.load_weights = original
    client.sync_weights(Policy(seed=5))
    assert client.health()["status"] == "ok" and len(client.generate([REQUEST], ONE)) == 1


def test_limits_answer_4xx_naming_the_bound_and_the_server_lives_on(served):
    engine, url = served
    client = RemoteRolloutEngine(url)
    client.wait_ready(5)
    post = lambda path, **kw: requests.post(url + path, timeout=10, **kw)  # noqa: E731
    r = post("/generate", data=b"x" * (2 << 20))
    assert r.status_code == 413 and "--max-body-mb" in r.json()["error"]
    for params, words in ((SamplingParams(n=10_000, temperature=1.0), "n = 10000"),
                          (SamplingParams(max_new_tokens=10**9), "max_new_tokens"),
                          (SamplingParams(max_new_tokens=60), "exceeds max_model_len 64")):
        r = post("/generate", data=encode_generate([REQUEST], params, 0))
        assert r.status_code == 400 and words in r.json()["error"], r.text
    policy = Policy(seed=6)
    manifest = encode_manifest(10**12, plan_transfer(policy, None, 1 << 20))
    r = post("/weights/begin", json=manifest)
    assert r.status_code == 409 and "--max-version-step" in r.json()["error"]
    bad = plan_transfer(policy, None, 1 << 20)
    bad[0][0] = bad[0][0].__class__("model.language_model.0.weight", (65, 64), "float32")
    r = post("/weights/begin", json=encode_manifest(1, bad))
    assert r.status_code == 400 and "model.language_model.0.weight" in r.json()["error"]
    # a bucket whose bytes are not what its manifest promised is refused before it can be committed
    buckets = plan_transfer(policy, None, 1 << 20)
    transfer = post("/weights/begin", json=encode_manifest(1, buckets)).json()["transfer"]
    wrong = {e.name: torch.zeros(e.shape, dtype=torch.float64) for e in buckets[0]}
    r = requests.put(f"{url}/weights/{transfer}/0", data=b"".join(bytes(c) for c in safetensors_chunks(wrong)))
    assert r.status_code in (400, 413) and "bucket 0" in r.json()["error"]
    assert client.health()["status"] == "ok" and client.health()["weight_version"] == 0
    client.weight_version = -2                                   # an older version than the server's
    with pytest.raises(StaleWeights, match="not newer"):
        client.sync_weights(policy)
    client.weight_version = 0
    client.sync_weights(policy)                                  # after all that, a normal push lands
    assert client.weight_version == 1 and language_model_equal(engine.model, policy)


def test_a_queued_generate_is_not_timed_out_by_the_rollout_ahead_and_a_hung_one_is():
    engine = StandInEngine(delay_s=1.5)
    url, server = serve_in_thread(engine)
    try:
        results, errors = [], []

        def call():
            try:
                results.append(RemoteRolloutEngine(url, request_timeout_s=2.5).generate([REQUEST], ONE))
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(e)
        threads = [threading.Thread(target=call) for _ in range(3)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(results) == 3
        assert time.monotonic() - t0 >= 4.4       # they ran one after another: the last queued 3 s > 2.5 s
        engine.delay_s = 4.0
        with pytest.raises(RolloutServerError, match=r"running for 1\.\d s, beyond 1 s"):
            RemoteRolloutEngine(url, request_timeout_s=1.0).generate([REQUEST], ONE)
    finally:
        server.should_exit = True
