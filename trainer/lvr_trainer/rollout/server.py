"""`lvr rollout-server`: any servable rollout engine behind HTTP (FastAPI + uvicorn, as vLLM's own server).

    GET  /health                       {"status": "ok"|"degraded", "weight_version", "shared_dir", "shared_token"}
    POST /generate                     safetensors body (rollout/wire.py) -> 202 {"job": id}: queued
    GET  /generate/{job}               202 {"state": "queued"|"running", "seconds"} while it waits or runs;
                                       200 JSON rollouts + the weight version used; 409 when the caller
                                       expects another weight version (never a silent stale reply)
    POST /weights/begin                JSON manifest (version; each bucket's names, shapes, dtypes) -> {"transfer"}
    PUT  /weights/{transfer}/{k}       bucket k: a safetensors body (streamed to the staging directory), or
                                       JSON {"path"} naming the bucket's file on a volume shared with the trainer
    POST /weights/{transfer}/commit    load every bucket, then serve the new version
    POST /weights                      one safetensors body (small models), or JSON {"path", "weight_version"}
    GET  /metrics                      Prometheus text
    POST /shutdown                     stop serving

A weight transfer is checked whole before its first byte reaches the engine: the manifest's names and
shapes against the served model, each bucket's header against the manifest as it arrives. Buckets wait on
disk (or in the shared file the trainer wrote), so neither side holds more than about one bucket beyond its
model, and the engine keeps serving the old version, whole, until the commit; a transfer that dies half way
changes nothing, and the next `begin` replaces it. Should an engine fail while loading (its weights then
mixed), the server says `degraded` and refuses to generate until a whole transfer lands.

One engine call runs at a time (engines are not thread-safe; a GPU runs one batch anyway), in a worker
thread, so /health and /metrics answer while a batch generates. A `/generate` is a job: the client waits
for its result by polling, and its timeout counts the job's running time, not the time it queued behind
another rollout. Bad requests get a 4xx naming what is wrong, engine errors a 500; neither stops the server.
"""

import asyncio
import json
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lvr_trainer.rollout.base import ServableEngine
from lvr_trainer.rollout.weights import check_entries
from lvr_trainer.rollout.wire import (WireError, check_bucket_header, decode_generate, decode_manifest,
                                      decode_weights, encode_rollouts, read_header)

log = logging.getLogger("lvr.rollout_server")


@dataclass(frozen=True)
class ServerLimits:
    """What one call may ask. max_model_len: longest prompt + reply (the engine's context)."""

    max_body_bytes: int = 8 << 30
    max_n: int = 64
    max_requests: int = 1024
    max_model_len: int = 32768
    max_version_step: int = 1000
    result_ttl_s: float = 600.0

    def check_generate(self, requests, params) -> None:
        if not 1 <= params.n <= self.max_n:
            raise WireError(f"n = {params.n}: must be within 1..{self.max_n} (--max-n)")
        if not 1 <= params.max_new_tokens < self.max_model_len:
            raise WireError(f"max_new_tokens = {params.max_new_tokens}: must be within 1..{self.max_model_len - 1} "
                            "(the server's max_model_len)")
        if not 0 <= params.temperature <= 100 or not 0 < params.top_p <= 1:
            raise WireError(f"temperature {params.temperature} / top_p {params.top_p}: need 0 <= T <= 100, "
                            "0 < top_p <= 1")
        if len(requests) > self.max_requests:
            raise WireError(f"{len(requests)} requests in one call: at most {self.max_requests}")
        for i, r in enumerate(requests):
            if len(r.input_ids) + params.max_new_tokens > self.max_model_len:
                raise WireError(f"request {i}: prompt of {len(r.input_ids)} tokens + max_new_tokens "
                                f"{params.max_new_tokens} exceeds max_model_len {self.max_model_len} "
                                "(rollout.max_model_len)")


@dataclass
class ServerStats:
    """Counters behind /metrics (monotonic except `queue` and `weight_version`)."""

    requests: int = 0
    replies: int = 0
    generated_tokens: int = 0
    generate_seconds: float = 0.0
    weight_loads: int = 0
    weight_load_seconds: float = 0.0
    weight_bytes: int = 0
    queue: int = 0
    weight_version: int = 0
    errors: dict[int, int] = field(default_factory=dict)

    def prometheus(self) -> str:
        rate = self.generated_tokens / self.generate_seconds if self.generate_seconds else 0.0
        lines = []
        for name, kind, value, help_ in (
                ("requests_total", "counter", self.requests, "/generate calls answered with rollouts"),
                ("replies_total", "counter", self.replies, "rollouts returned"),
                ("generated_tokens_total", "counter", self.generated_tokens, "tokens sampled"),
                ("generate_seconds_total", "counter", self.generate_seconds, "seconds spent generating"),
                ("tokens_per_second", "gauge", rate, "generated tokens per generating second"),
                ("queue_length", "gauge", self.queue, "engine calls waiting or running"),
                ("weight_version", "gauge", self.weight_version, "version of the weights now loaded"),
                ("weight_loads_total", "counter", self.weight_loads, "weight versions loaded"),
                ("weight_load_seconds_total", "counter", self.weight_load_seconds, "seconds spent loading weights"),
                ("weight_bytes_total", "counter", self.weight_bytes, "weight bytes received")):
            lines += [f"# HELP lvr_rollout_{name} {help_}", f"# TYPE lvr_rollout_{name} {kind}",
                      f"lvr_rollout_{name} {value}"]
        lines += ["# HELP lvr_rollout_errors_total requests answered with an error, by HTTP status",
                  "# TYPE lvr_rollout_errors_total counter"]
        lines += [f'lvr_rollout_errors_total{{code="{code}"}} {n}' for code, n in sorted(self.errors.items())]
        return "\n".join(lines) + "\n"


def weights_from_path(path: str):
    """(name, tensor) pairs from a safetensors file or every *.safetensors file of a directory, one tensor
    at a time."""
    p = Path(path)
    files = sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
    if not files or not all(f.is_file() for f in files):
        raise WireError(f"/weights path {path!r}: no safetensors file there (is the volume shared with "
                        "the trainer mounted in this container?)")
    return _tensors_of(files)


def _tensors_of(files):
    """Each tensor of each file, read into memory of its own one at a time (not memory-mapped: the file's
    pages then stay page cache, which the kernel can drop, instead of joining this process's resident set)."""
    import torch

    from lvr_trainer.rollout.wire import dtype_of

    for path in files:
        header, start = read_header(path)
        with open(path, "rb") as f:
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                begin, end = info["data_offsets"]
                raw = torch.empty(end - begin, dtype=torch.uint8)
                f.seek(start + begin)
                if f.readinto(memoryview(raw.numpy())) != end - begin:
                    raise WireError(f"{path}: {name} is cut short")
                yield name, raw.view(dtype_of(info["dtype"])).reshape(info["shape"])


@dataclass
class Transfer:
    """A weight transfer under way: its buckets' files arrive in `directory` (or where the trainer wrote them)."""

    id: str
    version: int
    buckets: list
    directory: Path
    files: dict[int, Path] = field(default_factory=dict)

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        for f in self.files.values():
            f.unlink(missing_ok=True)


@dataclass
class Job:
    """A queued or running `/generate` call; `result` is its HTTP status and body once done."""

    queued_at: float
    started_at: float | None = None
    done_at: float | None = None
    result: tuple[int, object] | None = None
    task: object = None


def create_app(engine: ServableEngine, weight_version: int = 0, limits: ServerLimits | None = None,
               staging_dir: str | None = None, shared_dir: str | None = None):
    """The FastAPI app serving `engine`, whose current weights are version `weight_version`.
    (No `from __future__ import annotations` in this module: FastAPI reads the endpoints' `Request`
    annotations at run time.)"""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse

    limits = limits or ServerLimits()
    app = FastAPI(title="LongVideo-RL rollout server")
    stats = ServerStats(weight_version=weight_version)
    engine_lock = threading.Lock()
    staging = Path(staging_dir or tempfile.mkdtemp(prefix="lvr-rollout-staging-"))
    staging.mkdir(parents=True, exist_ok=True)
    state = {"transfer": None, "whole": True}
    jobs: dict[str, Job] = {}
    shared_token = secrets.token_hex(8)
    app.state.stats, app.state.server, app.state.marker = stats, None, None
    if shared_dir is not None:     # the trainer finds this marker when it mounts the same volume
        app.state.marker = Path(shared_dir, f"lvr-rollout-{shared_token}")
        app.state.marker.write_text("the rollout server's shared-volume marker\n")

    def error(code: int, message: str) -> JSONResponse:
        stats.errors[code] = stats.errors.get(code, 0) + 1
        return JSONResponse({"error": message}, status_code=code)

    async def run_exclusive(fn):
        stats.queue += 1
        try:
            def locked():
                with engine_lock:
                    return fn()
            return await asyncio.to_thread(locked)
        finally:
            stats.queue -= 1

    async def body_within(request: Request, limit: int) -> bytes:
        declared = int(request.headers.get("content-length") or 0)
        if declared > limit:
            raise WireError(f"body of {declared} bytes exceeds the limit of {limit} (--max-body-mb)")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise WireError(f"body exceeds the limit of {limit} bytes (--max-body-mb)")
            chunks.append(chunk)
        return b"".join(chunks)

    @app.get("/health")
    async def health():
        return {"status": "ok" if state["whole"] else "degraded", "weight_version": stats.weight_version,
                "shared_dir": shared_dir, "shared_token": shared_token}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(stats.prometheus(), media_type="text/plain; version=0.0.4")

    # ---- generation ----
    @app.post("/generate")
    async def generate(request: Request):
        try:
            requests, params, expected = decode_generate(await body_within(request, limits.max_body_bytes))
            limits.check_generate(requests, params)
        except (WireError, ValueError) as e:
            return error(413 if "exceeds the limit" in str(e) else 400, str(e))
        now = time.monotonic()
        for key in [k for k, j in jobs.items() if j.done_at is not None and now - j.done_at > limits.result_ttl_s]:
            del jobs[key]
        job_id, job = secrets.token_hex(8), Job(queued_at=now)
        jobs[job_id] = job

        def work():
            job.started_at = time.monotonic()
            if not state["whole"]:
                return 503, {"error": "the last weight load failed half way; push the trainer's weights again"}
            if expected != stats.weight_version:   # checked under the lock: no load can slip in between
                return 409, {"error": f"stale weights: the caller expects weight version {expected}, this server "
                                      f"has {stats.weight_version}; push the trainer's weights first"}
            groups = engine.generate(requests, params)
            stats.generate_seconds += time.monotonic() - job.started_at
            stats.requests += 1
            stats.replies += sum(len(g) for g in groups)
            stats.generated_tokens += sum(len(r.token_ids) for g in groups for r in g)
            return 200, encode_rollouts(groups, stats.weight_version)

        async def run():
            try:
                job.result = await run_exclusive(work)
            except Exception as e:  # an engine failure is this request's, not the server's
                log.exception("generate failed")
                job.result = 500, {"error": f"generate failed: {type(e).__name__}: {e}"}
            job.done_at = time.monotonic()
            if job.result[0] >= 400:
                stats.errors[job.result[0]] = stats.errors.get(job.result[0], 0) + 1

        job.task = asyncio.create_task(run())
        return JSONResponse({"job": job_id}, status_code=202)

    @app.get("/generate/{job_id}")
    async def generate_result(job_id: str):
        job = jobs.get(job_id)
        if job is None:
            return error(404, f"no generate job {job_id} (finished more than {limits.result_ttl_s:.0f} s ago, or "
                              "the server restarted)")
        if job.result is None:
            running = job.started_at is not None
            since = job.started_at if running else job.queued_at
            return JSONResponse({"state": "running" if running else "queued",
                                 "seconds": time.monotonic() - since}, status_code=202)
        code, body = job.result
        return JSONResponse(body, status_code=code)

    # ---- weights ----
    def check_version(version: int) -> str | None:
        if version <= stats.weight_version:
            return f"weight version {version} is not newer than the loaded {stats.weight_version}"
        if version > stats.weight_version + limits.max_version_step:
            return (f"weight version {version} jumps more than {limits.max_version_step} past the loaded "
                    f"{stats.weight_version} (--max-version-step)")
        return None

    def load(version: int, tensors, nbytes: int = 0, checked: bool = False):
        """Under the engine lock: the engine takes the tensors, then the version flips."""
        if (problem := check_version(version)) is not None:
            return problem
        t0 = time.monotonic()
        try:
            engine.load_weights(tensors, checked=checked)
        except Exception:
            if checked:     # checked up front, so it failed inside the engine, half way: weights mixed
                state["whole"] = False
            raise
        state["whole"] = True
        stats.weight_load_seconds += time.monotonic() - t0
        stats.weight_loads += 1
        stats.weight_bytes += nbytes
        stats.weight_version = version
        return None

    async def load_reply(fn):
        try:
            problem = await run_exclusive(fn)
        except (WireError, KeyError, ValueError) as e:
            return error(400, f"/weights: {e}")
        except Exception as e:
            log.exception("weight load failed")
            return error(500, f"weight load failed: {type(e).__name__}: {e}")
        if problem is not None:
            return error(409, problem)
        return {"weight_version": stats.weight_version}

    @app.post("/weights/begin")
    async def begin(request: Request):
        try:
            version, buckets = decode_manifest(json.loads(await body_within(request, 64 << 20)))
            check_entries(((e.name, e.shape) for b in buckets for e in b), engine.weight_shapes(), "served model")
        except (WireError, KeyError, ValueError) as e:
            return error(400, f"/weights/begin: {e}")
        if (problem := check_version(version)) is not None:
            return error(409, problem)
        if state["transfer"] is not None:            # a transfer its trainer abandoned: replaced
            state["transfer"].discard()
        transfer = Transfer(secrets.token_hex(8), version, buckets, staging / f"transfer-{version}")
        transfer.directory.mkdir(parents=True, exist_ok=True)
        state["transfer"] = transfer
        return {"transfer": transfer.id, "buckets": len(buckets)}

    def current(transfer_id: str, index: int | None = None):
        t = state["transfer"]
        if t is None or t.id != transfer_id:
            raise LookupError(f"no weight transfer {transfer_id} under way (a newer one replaced it, or it "
                              "committed); begin again")
        if index is not None and not 0 <= index < len(t.buckets):
            raise WireError(f"bucket {index}: the transfer has buckets 0..{len(t.buckets) - 1}")
        return t

    @app.put("/weights/{transfer_id}/{index}")
    async def bucket(transfer_id: str, index: int, request: Request):
        try:
            t = current(transfer_id, index)
            cap = sum(e.nbytes for e in t.buckets[index]) + (1 << 20)
            if request.headers.get("content-type", "").startswith("application/json"):
                path = Path(str(json.loads(await body_within(request, 1 << 16))["path"]))
            else:
                path = t.directory / f"bucket-{index:05d}.safetensors"
                size = 0
                with open(path, "wb") as f:
                    async for chunk in request.stream():
                        size += len(chunk)
                        if size > min(cap, limits.max_body_bytes):
                            raise WireError(f"bucket {index}: body exceeds the {min(cap, limits.max_body_bytes)} "
                                            "bytes its manifest allows")
                        f.write(chunk)
            header, _ = read_header(path)
            check_bucket_header(header, t.buckets[index], index)
        except LookupError as e:
            return error(404, str(e))
        except (WireError, KeyError, ValueError, TypeError, OSError) as e:
            return error(413 if "exceeds" in str(e) else 400, f"/weights bucket: {e}")
        except Exception as e:  # the trainer went away mid-body (ClientDisconnect): nothing was accepted
            log.warning("weight bucket %d of transfer %s cut short: %s", index, transfer_id, type(e).__name__)
            return error(400, f"/weights bucket {index}: body cut short ({type(e).__name__})")
        t.files[index] = path
        return {"received": len(t.files), "buckets": len(t.buckets)}

    @app.post("/weights/{transfer_id}/commit")
    async def commit(transfer_id: str):
        try:
            t = current(transfer_id)
        except LookupError as e:
            return error(404, str(e))
        missing = [k for k in range(len(t.buckets)) if k not in t.files]
        if missing:
            return error(400, f"/weights commit: buckets {missing[:10]} have not arrived")
        nbytes = sum(e.nbytes for b in t.buckets for e in b)
        files = [t.files[k] for k in range(len(t.buckets))]
        try:
            return await load_reply(lambda: load(t.version, _tensors_of(files), nbytes, checked=True))
        finally:
            if state["transfer"] is t:
                state["transfer"] = None
            t.discard()

    @app.post("/weights")
    async def weights(request: Request):
        try:
            body = await body_within(request, limits.max_body_bytes)
            if request.headers.get("content-type", "").startswith("application/json"):
                spec = json.loads(body)
                version, tensors = int(spec["weight_version"]), weights_from_path(str(spec["path"]))
            else:
                named, version = decode_weights(body)
                tensors = named.items()
                del body
        except (WireError, ValueError, KeyError, TypeError) as e:
            code = 413 if "exceeds the limit" in str(e) else 400
            return error(code, f"/weights: {e}" if not isinstance(e, KeyError) else f"/weights: JSON lacks {e}")
        return await load_reply(lambda: load(version, tensors))

    @app.post("/shutdown")
    async def shutdown():
        if app.state.server is not None:
            app.state.server.should_exit = True
        return {"status": "stopping"}

    return app


def serve(engine: ServableEngine, host: str, port: int, weight_version: int = 0, log_level: str = "warning",
          drain_on_sigterm: bool = False, drain_timeout_s: float = 120.0, limits: ServerLimits | None = None,
          staging_dir: str | None = None, shared_dir: str | None = None) -> None:
    """Serve until POST /shutdown or a signal. With `drain_on_sigterm`, SIGTERM keeps serving until the
    trainer's /shutdown or `drain_timeout_s`, whichever comes first (a trainer that died sends none)."""
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if drain_on_sigterm and sig == signal.SIGTERM and not getattr(self, "draining", False):
                self.draining = True
                print(f"rollout-server: SIGTERM: serving on until the trainer's POST /shutdown, at most "
                      f"{drain_timeout_s:.0f} s", flush=True)
                timer = threading.Timer(drain_timeout_s, lambda: setattr(self, "should_exit", True))
                timer.daemon = True
                timer.start()
                return
            super().handle_exit(sig, frame)

    app = create_app(engine, weight_version, limits, staging_dir, shared_dir)
    server = Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False))
    app.state.server = server
    try:
        server.run()
    finally:
        if app.state.marker is not None:
            app.state.marker.unlink(missing_ok=True)
    stats = app.state.stats
    print(f"rollout-server: stopped at weight version {stats.weight_version} after {stats.requests} requests, "
          f"{stats.replies} replies, {stats.generated_tokens} tokens, {stats.weight_loads} weight loads", flush=True)


def default_shared_dir() -> str | None:
    """/dev/shm when this container can write there (a pod's memory volume, shared by its containers)."""
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
