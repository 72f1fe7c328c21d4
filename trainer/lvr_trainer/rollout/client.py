"""`RemoteRolloutEngine`: the trainer's client of `lvr rollout-server` (the rollout sidecar).

Every reply carries the weight version it was generated with; the client knows which version it pushed
last, and a reply from any other version is an error (`StaleWeights`), never a silently off-policy
batch. Calls have a connect and a read timeout, so a dead or hung server is an error within the
timeout. A `/generate` is a job the client polls: `request_timeout_s` bounds the job's running time, not
the time it waits behind another rollout. Idempotent calls (health, metrics, submitting and polling a
job) are retried with backoff when the connection fails; a weight transfer is not (a transfer that fails
leaves the server on its old version, whole, and the trainer's restart pushes again).

A sync sends the language model in the policy's compute dtype, in buckets of `bucket_bytes`, gathered one
bucket at a time on the pushing rank (`rollout/weights.py`): through a file on a volume the server also
mounts when there is one (the pod's /dev/shm: no copy through HTTP), else streamed over HTTP.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import torch

from lvr_trainer.rollout.base import NamedTensors, Rollout, RolloutRequest, SamplingParams
from lvr_trainer.rollout.weights import gather_bucket, plan_transfer
from lvr_trainer.rollout.wire import (decode_rollouts, encode_generate, encode_manifest, encode_weights,
                                      safetensors_chunks)

log = logging.getLogger("lvr.rollout")


class RolloutServerError(RuntimeError):
    """The rollout server is unreachable, hung, or refused a call; the message names it and the fix."""


class StaleWeights(RolloutServerError):
    """A reply generated with other weights than the trainer pushed last."""


class RemoteRolloutEngine:
    """`RolloutEngine` over HTTP. `pushes_weights`: this process sends the weights (one per server: the
    pod's local rank 0); the others take part in the gathers and count versions, and `after_push` (a
    barrier) keeps every rank from generating before the push is done. `transfer`: "auto" (a shared volume
    when the server's marker is visible from here, else HTTP), "http" or "shared"."""

    # one server per pod, running one engine call at a time: its ranks' calls would only queue behind each other
    shared_by_ranks = True

    def __init__(self, url: str, request_timeout_s: float = 600.0, connect_timeout_s: float = 5.0,
                 retries: int = 3, backoff_s: float = 0.5, pushes_weights: bool = True, after_push=None,
                 weight_dtype: torch.dtype | None = None, bucket_bytes: int = 512 << 20, transfer: str = "auto",
                 poll_s: float = 0.05):
        import requests

        if transfer not in ("auto", "http", "shared"):
            raise ValueError(f"transfer {transfer!r}: use auto, http or shared")
        self.url = url.rstrip("/")
        self.request_timeout_s = request_timeout_s
        self.timeout = (connect_timeout_s, request_timeout_s)
        self.retries, self.backoff_s, self.poll_s = retries, backoff_s, poll_s
        self.pushes_weights, self.after_push, self.weight_dtype = pushes_weights, after_push, weight_dtype
        self.bucket_bytes, self.transfer = bucket_bytes, transfer
        self.weight_version = 0
        self.last_transfer = ""            # "http" or "shared": how the last sync travelled
        self._server: dict = {}
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
                self._server = self.health()
                self.weight_version = int(self._server["weight_version"])
                return
            except RolloutServerError as e:
                last = str(e)
            time.sleep(poll_s)
        raise RolloutServerError(f"rollout server {self.url} not ready after {timeout_s:.0f} s "
                                 f"(rollout.startup_timeout_s); last error: {last}")

    # ---- generation ----
    def generate(self, requests: list[RolloutRequest], params: SamplingParams) -> list[list[Rollout]]:
        body = encode_generate(requests, params, self.weight_version)
        job = self._check(self._call("POST", "/generate", idempotent=True, data=body,
                                     headers={"content-type": "application/octet-stream"}), "POST /generate").json()
        reply, delay = None, self.poll_s
        while True:
            reply = self._check(self._call("GET", f"/generate/{job['job']}", idempotent=True), "POST /generate")
            if reply.status_code == 200:
                break
            state = reply.json()
            if state["state"] == "running" and state["seconds"] > self.request_timeout_s:
                raise RolloutServerError(
                    f"rollout server {self.url}: POST /generate running for {state['seconds']:.1f} s, beyond "
                    f"{self.request_timeout_s:.0f} s (rollout.request_timeout_s): the engine is hung or the "
                    "timeout is too short for this rollout")
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)
        groups, version = decode_rollouts(reply.json())
        if version != self.weight_version:
            raise StaleWeights(f"POST /generate: replies generated with weight version {version}, the trainer "
                               f"pushed {self.weight_version}")
        if len(groups) != len(requests) or any(len(g) != params.n for g in groups):
            raise RolloutServerError(f"POST /generate: {len(groups)} groups for {len(requests)} requests")
        return groups

    # ---- weights ----
    def sync_weights(self, model: torch.nn.Module) -> None:
        """Send `model`'s language model as the next version (every rank calls it: the gathers are
        collectives). A failed transfer raises after every bucket's gather, so no rank is left waiting in one."""
        version = self.weight_version + 1
        buckets = plan_transfer(model, self.weight_dtype, self.bucket_bytes)
        failure = None
        if self.pushes_weights:
            try:
                session = _Transfer(self, version, buckets)
            except RolloutServerError as e:
                failure, session = e, None
        for k, bucket in enumerate(buckets):
            tensors = gather_bucket(model, bucket, keep=self.pushes_weights and failure is None)
            if tensors:
                try:
                    session.send(k, tensors)
                except RolloutServerError as e:
                    failure = e
                del tensors
        if self.pushes_weights and failure is None:
            try:
                session.commit()
            except RolloutServerError as e:
                failure = e
        if failure is not None:
            raise failure
        if self.after_push is not None:
            self.after_push()
        self.weight_version = version

    def load_weights(self, named_tensors: NamedTensors) -> None:
        """Push these tensors as the next version in one body (small models and tests; `sync_weights` is
        the bucketed transfer)."""
        version = self.weight_version + 1
        if self.pushes_weights:
            body = encode_weights(named_tensors, version)
            self._check(self._call("POST", "/weights", idempotent=False, data=body,
                                   headers={"content-type": "application/octet-stream"}), "POST /weights")
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

    def shared_dir(self, nbytes: int) -> Path | None:
        """The volume shared with the server, when this transfer may go through it: the server's marker
        file is visible here and the volume has room for the transfer's buckets."""
        if self.transfer == "http":
            return None
        if not self._server:
            self._server = self.health()
        where, token = self._server.get("shared_dir"), self._server.get("shared_token")
        ok = bool(where) and Path(where, f"lvr-rollout-{token}").is_file()
        if ok and shutil.disk_usage(where).free < nbytes + (64 << 20):
            log.warning("rollout: %s has %.1f GiB free, the weights need %.1f GiB: sending over HTTP "
                        "(raise resources.shmSize)", where, shutil.disk_usage(where).free / 2**30, nbytes / 2**30)
            ok = False
        if self.transfer == "shared" and not ok:
            raise RolloutServerError(f"rollout.weight_transfer shared: the server's volume {where!r} is not "
                                     "mounted here (or has no room); use auto or http")
        return Path(where) if ok else None

    def metrics(self) -> str:
        return self._check(self._call("GET", "/metrics", idempotent=True), "GET /metrics").text

    def shutdown(self) -> None:
        """Ask the server to exit (a best effort: it may be gone already)."""
        try:
            self._http.post(self.url + "/shutdown", timeout=self.timeout)
        except Exception as e:  # noqa: BLE001 - the pod is ending either way
            log.info("rollout server shutdown: %s", _short(e))


class _Transfer:
    """One weight transfer: the manifest checked by the server, then the buckets, then the commit."""

    def __init__(self, client: RemoteRolloutEngine, version: int, buckets):
        self.client = client
        nbytes = sum(e.nbytes for b in buckets for e in b)
        self.shared = client.shared_dir(nbytes)
        client.last_transfer = "shared" if self.shared else "http"
        reply = client._check(client._call("POST", "/weights/begin", idempotent=False,
                                           json=encode_manifest(version, buckets)), "POST /weights/begin").json()
        self.id = reply["transfer"]
        if self.shared:
            self.shared = self.shared / f"lvr-weights-{self.id}"
            self.shared.mkdir(parents=True, exist_ok=True)

    def send(self, index: int, tensors: dict[str, torch.Tensor]) -> None:
        path = f"/weights/{self.id}/{index}"
        if self.shared:
            file = self.shared / f"bucket-{index:05d}.safetensors"
            with open(file, "wb") as f:
                for chunk in safetensors_chunks(tensors):
                    f.write(chunk)
            reply = self.client._call("PUT", path, idempotent=False, json={"path": str(file)})
        else:
            reply = self.client._call("PUT", path, idempotent=False, data=safetensors_chunks(tensors),
                                      headers={"content-type": "application/octet-stream"})
        self.client._check(reply, f"PUT /weights bucket {index}")

    def commit(self) -> None:
        try:
            self.client._check(self.client._call("POST", f"/weights/{self.id}/commit", idempotent=False),
                               "POST /weights commit")
        finally:
            if self.shared:
                shutil.rmtree(self.shared, ignore_errors=True)


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
