"""`RemoteRolloutEngine`: the trainer's client of `lvr rollout-server` (the rollout sidecar).

Every reply carries the weight version it was generated with; the client knows which version it pushed
last, and a reply from any other version is an error (`StaleWeights`), never a silently off-policy
batch. Calls have a connect and a read timeout, so a dead or hung server is an error within the
timeout. Idempotent calls (health, metrics, generate: same weights and seed give the same replies)
are retried with backoff when the connection fails; a weight push is not (a half-applied push must
fail the step, and the trainer's restart pushes again).
"""

from __future__ import annotations

import logging
import os
import time

import torch

from lvr_trainer.rollout.base import NamedTensors, Rollout, RolloutRequest, SamplingParams
from lvr_trainer.rollout.weights import policy_tensors
from lvr_trainer.rollout.wire import decode_rollouts, encode_generate, encode_weights

log = logging.getLogger("lvr.rollout")


class RolloutServerError(RuntimeError):
    """The rollout server is unreachable, hung, or refused a call; the message names it and the fix."""


class StaleWeights(RolloutServerError):
    """A reply generated with other weights than the trainer pushed last."""


class RemoteRolloutEngine:
    """`RolloutEngine` over HTTP. `pushes_weights`: this process sends the weights (one per server: the
    pod's local rank 0); the others only count versions, and `after_push` (a barrier) keeps every rank
    from generating before the push is done."""

    def __init__(self, url: str, request_timeout_s: float = 600.0, connect_timeout_s: float = 5.0,
                 retries: int = 3, backoff_s: float = 0.5, pushes_weights: bool = True, after_push=None,
                 weight_dtype: torch.dtype | None = None):
        import requests

        self.url = url.rstrip("/")
        self.timeout = (connect_timeout_s, request_timeout_s)
        self.retries, self.backoff_s = retries, backoff_s
        self.pushes_weights, self.after_push, self.weight_dtype = pushes_weights, after_push, weight_dtype
        self.weight_version = 0
        self._http = requests.Session()

    def _call(self, method: str, path: str, idempotent: bool, **kwargs):
        """One call, retried on connection failures when idempotent; raises RolloutServerError."""
        import requests

        attempts = self.retries + 1 if idempotent else 1
        for attempt in range(attempts):
            try:
                return self._http.request(method, self.url + path, timeout=self.timeout, **kwargs)
            except requests.ConnectionError as e:
                if attempt + 1 == attempts:
                    raise RolloutServerError(
                        f"rollout server {self.url} unreachable ({method} {path}, {attempts} attempt(s)): "
                        f"{_short(e)}. Is the rollout container running? Its log says why it stopped.") from None
                time.sleep(self.backoff_s * 2 ** attempt)
            except requests.Timeout:
                raise RolloutServerError(
                    f"rollout server {self.url} did not answer {method} {path} within {self.timeout[1]:.0f} s "
                    "(rollout.request_timeout_s): it is hung or overloaded; raise the timeout only if "
                    "generation is known to take that long") from None

    @staticmethod
    def _check(reply, what: str):
        if reply.status_code == 409:
            raise StaleWeights(f"{what}: {_message(reply)}")
        if reply.status_code >= 400:
            raise RolloutServerError(f"{what}: HTTP {reply.status_code}: {_message(reply)}")
        return reply

    def health(self) -> dict:
        return self._check(self._call("GET", "/health", idempotent=True), "GET /health").json()

    def wait_ready(self, timeout_s: float, poll_s: float = 1.0) -> None:
        """Block until /health answers (the server loads its model first); adopt its weight version so a
        trainer restarted beside a running server pushes a newer one."""
        deadline, last = time.monotonic() + timeout_s, "no answer yet"
        while time.monotonic() < deadline:
            try:
                self.weight_version = int(self.health()["weight_version"])
                return
            except RolloutServerError as e:
                last = str(e)
            time.sleep(poll_s)
        raise RolloutServerError(f"rollout server {self.url} not ready after {timeout_s:.0f} s "
                                 f"(rollout.startup_timeout_s); last error: {last}")

    def generate(self, requests: list[RolloutRequest], params: SamplingParams) -> list[list[Rollout]]:
        body = encode_generate(requests, params, self.weight_version)
        reply = self._check(self._call("POST", "/generate", idempotent=True, data=body,
                                       headers={"content-type": "application/octet-stream"}), "POST /generate")
        groups, version = decode_rollouts(reply.json())
        if version != self.weight_version:
            raise StaleWeights(f"POST /generate: replies generated with weight version {version}, the trainer "
                               f"pushed {self.weight_version}")
        if len(groups) != len(requests) or any(len(g) != params.n for g in groups):
            raise RolloutServerError(f"POST /generate: {len(groups)} groups for {len(requests)} requests")
        return groups

    def load_weights(self, named_tensors: NamedTensors) -> None:
        """Push these tensors as the next version (every rank calls it; only the pusher sends)."""
        version = self.weight_version + 1
        if self.pushes_weights:
            body = encode_weights(named_tensors, version)
            self._check(self._call("POST", "/weights", idempotent=False, data=body,
                                   headers={"content-type": "application/octet-stream"}), "POST /weights")
        else:
            for _ in named_tensors:   # the gather is a collective: every rank iterates
                pass
        if self.after_push is not None:
            self.after_push()
        self.weight_version = version

    def load_weights_from_path(self, path: str) -> None:
        """The next version from safetensors files on a volume the server also mounts (no HTTP copy)."""
        version = self.weight_version + 1
        if self.pushes_weights:
            self._check(self._call("POST", "/weights", idempotent=False,
                                   json={"path": path, "weight_version": version}), "POST /weights")
        if self.after_push is not None:
            self.after_push()
        self.weight_version = version

    def sync_weights(self, model: torch.nn.Module) -> None:
        self.load_weights(policy_tensors(model, self.weight_dtype))

    def metrics(self) -> str:
        return self._check(self._call("GET", "/metrics", idempotent=True), "GET /metrics").text

    def shutdown(self) -> None:
        """Ask the server to exit (a best effort: it may be gone already)."""
        try:
            self._http.post(self.url + "/shutdown", timeout=self.timeout)
        except Exception as e:  # noqa: BLE001 - the pod is ending either way
            log.info("rollout server shutdown: %s", _short(e))


def _message(reply) -> str:
    try:
        return str(reply.json().get("error", reply.text))[:500]
    except ValueError:
        return reply.text[:500]


def _short(e: Exception) -> str:
    return str(e).split("(Caused by")[-1].strip(" ()")[:200]


def is_weight_pusher() -> bool:
    """One pusher per pod (each pod has its own sidecar): the pod's local rank 0."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0
