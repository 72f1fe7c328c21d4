"""The main job on the local cluster, the way a user runs it: the Helm chart's operator, a dataset in
S3, `examples/local/` applied, progress watched as `kubectl get` shows it, then both checkpoints scored.

Shared by `make demo` (lvr_localcluster.demo) and the end-to-end test (tests/e2e), so that the test
crosses exactly the joints the demo does. Every step is a small function; nothing here knows pytest.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lvr_localcluster.controlplane import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples" / "local"
CHART = REPO_ROOT / "charts" / "longvideo-rl"
GROUP, VERSION = "longvideo.dev", "v1alpha1"
PLURALS = {"LongVideoDataset": "longvideodatasets", "SFTJob": "sftjobs", "RLJob": "rljobs"}
EXAMPLE_ENDPOINT = "http://127.0.0.1:9000"     # what examples/local/ name; tests substitute their own
VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class S3Target:
    """An S3 server and the credentials of its Secret."""

    url: str
    access_key: str
    secret_key: str

    def env(self) -> dict[str, str]:
        return {"LVR_S3_ENDPOINT": self.url, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key}


def lvr(*args: str, env: dict[str, str] | None = None, capture: bool = False) -> str:
    """Run the venv's `lvr` (raises with its output on failure)."""
    proc = subprocess.run([str(VENV_BIN / "lvr"), *args], env={**os.environ, **(env or {})}, text=True,
                          stdout=subprocess.PIPE if capture else None, stderr=subprocess.STDOUT if capture else None)
    if proc.returncode:
        raise RuntimeError(f"lvr {' '.join(args)} exited with {proc.returncode}\n{proc.stdout or ''}")
    return proc.stdout or ""


def upload_tree(s3: S3Target, local: Path, uri: str) -> int:
    """Put every file under `local` at `uri` (s3://bucket/prefix/...); returns the number of files."""
    from minio import Minio
    from urllib.parse import urlparse

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    url = urlparse(s3.url)
    client = Minio(url.netloc, s3.access_key, s3.secret_key, secure=url.scheme == "https")
    n = 0
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        client.fput_object(bucket, f"{prefix.strip('/')}/{path.relative_to(local).as_posix()}", str(path))
        n += 1
    return n


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_examples(endpoint: str = EXAMPLE_ENDPOINT, overrides: dict[str, dict] | None = None,
                  directory: Path = EXAMPLES) -> list[dict[str, Any]]:
    """The example resources in apply order (dataset, SFT, RL), with the S3 endpoint replaced and
    `overrides[name]` deep-merged into each one's spec (tests shorten the runs this way)."""
    docs = []
    for path in sorted(directory.glob("*.yaml")):
        text = path.read_text().replace(EXAMPLE_ENDPOINT, endpoint)
        docs += [d for d in yaml.safe_load_all(text) if d]
    order = list(PLURALS)
    docs.sort(key=lambda d: order.index(d["kind"]))
    for doc in docs:
        doc["spec"] = _merge(doc["spec"], (overrides or {}).get(doc["metadata"]["name"], {}))
    return docs


def helm(*args: str, kubeconfig: Path) -> str:
    """Run the real `helm` (installed by hack/install-helm.sh) against `kubeconfig`."""
    bin_dir = subprocess.run(["bash", str(REPO_ROOT / "hack" / "install-helm.sh")], check=True, text=True,
                             stdout=subprocess.PIPE).stdout.strip()
    proc = subprocess.run([str(Path(bin_dir) / "helm"), *args, "--kubeconfig", str(kubeconfig)], text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"helm {' '.join(args)} failed:\n{proc.stdout}")
    return proc.stdout


def install_operator(kubeconfig: Path, release: str, namespace: str, *, watch: list[str] | None = None,
                     resync_seconds: int = 5) -> str:
    """`helm upgrade --install` the chart with the local cluster's settings (it brings its own S3, so no
    MinIO); the operator's pod runs `lvr operator run` from this machine's venv."""
    from lvr_localcluster.ports import free_port

    # every pod of the local cluster shares 127.0.0.1: the liveness and metrics endpoints get free ports
    values = {"minio": {"enabled": False}, "watchNamespaces": watch or [],
              "operator": {"resyncSeconds": resync_seconds, "healthPort": free_port(), "metricsPort": free_port()}}
    values_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"lvr-values-{release}.json"
    values_file.write_text(json.dumps(values))
    return helm("upgrade", "--install", release, str(CHART), "--namespace", namespace, "--create-namespace",
                "--values", str(values_file), "--wait", "--timeout", "180s", kubeconfig=kubeconfig)


def apply(custom, namespace: str, docs: list[dict[str, Any]]) -> None:
    """Create each resource (what `kubectl apply -f` does for new objects)."""
    for doc in docs:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[doc["kind"]], doc)


def get(custom, namespace: str, kind: str, name: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[kind], name)


@dataclass
class Narrator:
    """Watches resources and says what `kubectl get` would show when it changes: phase moves, messages,
    and progress (step, loss, reward, accuracy) at most every `every_s` seconds."""

    custom: Any
    namespace: str
    names: list[tuple[str, str]]                      # (kind, name)
    say: Callable[[str], None] = print
    every_s: float = 15.0
    seen: dict[tuple[str, str], tuple] = field(default_factory=dict)
    last_progress: dict[tuple[str, str], float] = field(default_factory=dict)
    last_line: dict[tuple[str, str], str] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def poll(self) -> dict[tuple[str, str], dict[str, Any]]:
        statuses = {}
        for kind, name in self.names:
            status = get(self.custom, self.namespace, kind, name).get("status") or {}
            statuses[(kind, name)] = status
            self._narrate(kind, name, status)
        return statuses

    def _narrate(self, kind: str, name: str, status: dict[str, Any]) -> None:
        t = f"[{time.monotonic() - self.started:6.0f}s]"
        key = (kind, name)
        state = (status.get("phase"), status.get("message"))
        if state != self.seen.get(key) and status.get("phase"):
            self.seen[key] = state
            self.say(f"{t} {kind}/{name}: {status['phase']} - {status.get('message') or ''}".rstrip(" -"))
        line = progress_line(kind, status)
        due = time.monotonic() - self.last_progress.get(key, 0.0) >= self.every_s
        if line and line != self.last_line.get(key) and (due or status.get("phase") in ("Succeeded", "Ready")):
            self.last_progress[key], self.last_line[key] = time.monotonic(), line
            self.say(f"{t} {kind}/{name}: {line}")

    def wait(self, kind: str, name: str, phases: set[str], timeout: float,
             interval: float = 2.0) -> dict[str, Any]:
        """Narrate until `kind/name` reaches one of `phases`; its status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.poll()[(kind, name)]
            if status.get("phase") in phases:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"{kind}/{name} not in {sorted(phases)} after {timeout:.0f}s; status: "
                                   f"{json.dumps(status)[:2000]}")
            time.sleep(interval)


def progress_line(kind: str, status: dict[str, Any]) -> str | None:
    """`step 40/2400 (1%) loss 0.91` etc. from a status, or None when there is nothing to say."""
    if kind == "LongVideoDataset":
        rows = status.get("rows") or {}
        if not rows:
            return None
        out = f"rows valid {rows.get('valid')}/{rows.get('total')}"
        if status.get("cachedVideos") is not None:
            out += f", videos cached {status['cachedVideos']}, {status.get('cachedBytes', 0) / 2**20:.2f} MiB"
        return out
    p = status.get("progress") or {}
    if p.get("step") is None:
        return None
    out = f"step {p.get('summary', p['step'])} ({p.get('percent', 0)}%)"
    for key in ("loss", "reward", "accuracy"):
        if p.get(key) is not None:
            out += f" {key} {p[key]:.3f}"
    return out


def eval_checkpoint(model_uri: str, data: str, out: Path, s3: S3Target, max_pixels: int,
                    max_new_tokens: int, limit: int | None = None) -> dict[str, Any]:
    """`lvr eval` of a model directory in S3 on a local split; its results.json."""
    args = ["eval", "--model", model_uri, "--data", data, "--max-pixels", str(max_pixels),
            "--max-new-tokens", str(max_new_tokens), "--out", str(out), "--cache", str(out / "cache")]
    if limit:
        args += ["--limit", str(limit)]
    lvr(*args, env=s3.env(), capture=True)
    return json.loads((out / "results.json").read_text())


def compare(before: Path, after: Path) -> str:
    """The paired per-category table of two evals (`python -m lvr_trainer.eval.compare`)."""
    proc = subprocess.run([sys.executable, "-m", "lvr_trainer.eval.compare", str(before / "replies.jsonl"),
                           str(after / "replies.jsonl")], check=True, text=True, stdout=subprocess.PIPE)
    return proc.stdout


def worker_pods(core, namespace: str, job: str) -> Iterator[Any]:
    """The job's worker pods (label longvideo.dev/owner)."""
    return iter(core.list_namespaced_pod(namespace, label_selector=f"{GROUP}/owner={job},{GROUP}/role=worker").items)
