"""`lvr rollout-server`: any servable rollout engine behind HTTP (FastAPI + uvicorn, as vLLM's own server).

    GET  /health    200 {"status": "ok", "weight_version": v} once the engine is loaded
    POST /generate  safetensors body (rollout/wire.py) -> JSON rollouts + the weight version used;
                    409 when the caller expects another weight version (never a silent stale reply)
    POST /weights   safetensors body of named tensors with its version, or JSON {"path", "weight_version"}
                    naming a safetensors file or directory on a volume shared with the trainer;
                    versions only go up (409 otherwise)
    GET  /metrics   Prometheus text: requests, replies, generated tokens, tokens/s, queue, weight version
    POST /shutdown  stop serving (a trainer on a Kubernetes without native sidecars ends its pod this way)

One engine call runs at a time (engines are not thread-safe; a GPU runs one batch anyway) in a worker
thread, so /health and /metrics answer while a batch generates. A bad request gets a 4xx naming what is
wrong and an engine error a 500 with its message; neither stops the server.
"""

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lvr_trainer.rollout.base import ServableEngine
from lvr_trainer.rollout.wire import WireError, decode_generate, decode_weights, encode_rollouts

log = logging.getLogger("lvr.rollout_server")


@dataclass
class ServerStats:
    """Counters behind /metrics (monotonic except `queue` and `weight_version`)."""

    requests: int = 0
    replies: int = 0
    generated_tokens: int = 0
    generate_seconds: float = 0.0
    weight_loads: int = 0
    weight_load_seconds: float = 0.0
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
                ("weight_load_seconds_total", "counter", self.weight_load_seconds, "seconds spent loading weights")):
            lines += [f"# HELP lvr_rollout_{name} {help_}", f"# TYPE lvr_rollout_{name} {kind}",
                      f"lvr_rollout_{name} {value}"]
        lines += ["# HELP lvr_rollout_errors_total requests answered with an error, by HTTP status",
                  "# TYPE lvr_rollout_errors_total counter"]
        lines += [f'lvr_rollout_errors_total{{code="{code}"}} {n}' for code, n in sorted(self.errors.items())]
        return "\n".join(lines) + "\n"


def weights_from_path(path: str):
    """(name, tensor) pairs from a safetensors file or every *.safetensors file of a directory."""
    from safetensors.torch import load_file

    p = Path(path)
    files = sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
    if not files or not all(f.is_file() for f in files):
        raise WireError(f"/weights path {path!r}: no safetensors file there (is the volume shared with "
                        "the trainer mounted in this container?)")
    for f in files:
        yield from load_file(f).items()


def create_app(engine: ServableEngine, weight_version: int = 0):
    """The FastAPI app serving `engine`, whose current weights are version `weight_version`.
    (No `from __future__ import annotations` in this module: FastAPI reads the endpoints' `Request`
    annotations at run time.)"""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse

    app = FastAPI(title="LongVideo-RL rollout server")
    stats = ServerStats(weight_version=weight_version)
    engine_lock = threading.Lock()
    app.state.stats, app.state.server = stats, None

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

    @app.get("/health")
    async def health():
        return {"status": "ok", "weight_version": stats.weight_version}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(stats.prometheus(), media_type="text/plain; version=0.0.4")

    @app.post("/generate")
    async def generate(request: Request):
        try:
            requests, params, expected = decode_generate(await request.body())
        except (WireError, ValueError) as e:
            return error(400, str(e))

        def work():
            if expected != stats.weight_version:   # checked under the lock: no load can slip in between
                return None
            t0 = time.perf_counter()
            groups = engine.generate(requests, params)
            stats.generate_seconds += time.perf_counter() - t0
            return groups
        try:
            groups = await run_exclusive(work)
        except Exception as e:  # an engine failure is this request's, not the server's
            log.exception("generate failed")
            return error(500, f"generate failed: {type(e).__name__}: {e}")
        if groups is None:
            return error(409, f"stale weights: the caller expects weight version {expected}, this server has "
                              f"{stats.weight_version}; push the trainer's weights (POST /weights) first")
        stats.requests += 1
        stats.replies += sum(len(g) for g in groups)
        stats.generated_tokens += sum(len(r.token_ids) for g in groups for r in g)
        return encode_rollouts(groups, stats.weight_version)

    @app.post("/weights")
    async def weights(request: Request):
        body = await request.body()
        try:
            if request.headers.get("content-type", "").startswith("application/json"):
                spec = json.loads(body)
                version, tensors = int(spec["weight_version"]), weights_from_path(str(spec["path"]))
            else:
                named, version = decode_weights(body)
                tensors = named.items()
        except (WireError, ValueError, KeyError, TypeError) as e:
            return error(400, f"/weights: {e}" if not isinstance(e, KeyError) else f"/weights: JSON lacks {e}")

        def work():
            if version <= stats.weight_version:
                return False
            t0 = time.perf_counter()
            engine.load_weights(tensors)
            stats.weight_load_seconds += time.perf_counter() - t0
            stats.weight_loads += 1
            stats.weight_version = version
            return True
        try:
            loaded = await run_exclusive(work)
        except (WireError, KeyError, ValueError) as e:
            return error(400, f"/weights: {e}")
        except Exception as e:
            log.exception("weight load failed")
            return error(500, f"weight load failed: {type(e).__name__}: {e}")
        if not loaded:
            return error(409, f"weight version {version} is not newer than the loaded {stats.weight_version}")
        return {"weight_version": stats.weight_version}

    @app.post("/shutdown")
    async def shutdown():
        if app.state.server is not None:
            app.state.server.should_exit = True
        return {"status": "stopping"}

    return app


def serve(engine: ServableEngine, host: str, port: int, weight_version: int = 0, log_level: str = "warning",
          drain_on_sigterm: bool = False) -> None:
    """Serve until POST /shutdown or a signal (with `drain_on_sigterm`, SIGTERM waits for /shutdown)."""
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if drain_on_sigterm and sig == signal.SIGTERM:
                print("rollout-server: SIGTERM: serving on until the trainer's POST /shutdown", flush=True)
                return
            super().handle_exit(sig, frame)

    app = create_app(engine, weight_version)
    server = Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False))
    app.state.server = server
    server.run()
    stats = app.state.stats
    print(f"rollout-server: stopped at weight version {stats.weight_version} after {stats.requests} requests, "
          f"{stats.replies} replies, {stats.generated_tokens} tokens, {stats.weight_loads} weight loads", flush=True)
