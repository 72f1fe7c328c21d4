"""The operator at scale on the local cluster: N RLJobs applied at once (default 50).

Real kube-apiserver/scheduler/controller-manager 1.20 (hack/lvr_localcluster), the kubelet stand-in
running each worker as a CPU process (tests/operator/mock_trainer.py: reports progress on its pod,
exits 0), the operator in-process under kopf. Each job: 1 node, 0 GPUs (so all fit at once), rollout
engine `hf` (no sidecar). Two runs, each in a fresh namespace:

- `clean`: apply N jobs, wait for every worker pod and for every job Succeeded.
- `restart`: apply N jobs; when half of them have their pod, stop the operator and start a new one
  (fresh client, fresh state); wait as above. Counts pods created twice for one (job, rank, attempt).

Reads (`--reads`, one per invocation): `cache` (the default) reads the custom resources, pods and
children from the operator's watch-fed cache (lvr_operator/cache.py); `list` gets and lists them from the
API server on every reconcile.

Reported: seconds from the first apply to all pods created and to all jobs Succeeded, reconciles and
their p50/p99 latency (`service.latencies`: read + compute + write of one object), API calls per job
made by the operator's adapter (`Cluster.calls`; kopf's own watch and bookkeeping calls not counted),
and duplicate pods.

    .venv/bin/python bench/operator.py [--jobs 50] [--reads cache|list] [--steps 2] [--sleep 0.5]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MOCK = str(ROOT / "tests" / "operator" / "mock_trainer.py")
G, V, OWNER = "longvideo.dev", "v1alpha1", "longvideo.dev/owner"


class PodWatch:
    """Every pod ADDED in a namespace: first-seen time per owner, count per (owner, rank, attempt)."""

    def __init__(self, core, ns: str):
        from kubernetes import watch

        self.first: dict[str, float] = {}
        self.added: Counter[tuple[str, str, str]] = Counter()
        self._w, self._stop = watch.Watch(), threading.Event()
        self._t = threading.Thread(target=self._run, args=(core, ns), daemon=True)
        self._t.start()

    def _run(self, core, ns: str) -> None:
        from urllib3.exceptions import ProtocolError

        version = None
        while not self._stop.is_set():
            try:
                for ev in self._w.stream(core.list_namespaced_pod, ns, timeout_seconds=5,
                                         **({"resource_version": version} if version else {})):
                    meta = ev["object"].metadata
                    version, labels = meta.resource_version, meta.labels or {}
                    if ev["type"] == "ADDED" and OWNER in labels:
                        self.first.setdefault(labels[OWNER], time.monotonic())
                        self.added[(labels[OWNER], labels.get("longvideo.dev/node-rank", ""),
                                    labels.get("longvideo.dev/attempt", ""))] += 1
            except ProtocolError:
                continue

    def duplicates(self) -> int:
        return sum(n - 1 for n in self.added.values() if n > 1)

    def stop(self) -> None:
        self._stop.set()
        self._w.stop()
        self._t.join(10)


def rljob(name: str, args: argparse.Namespace) -> dict:
    spec = {"datasetRef": {"name": "ds"}, "model": {"uri": "s3://models/base"}, "rollout": {"engine": "transformers"},
            "command": [sys.executable, MOCK, "--steps", str(args.steps), "--sleep", str(args.sleep)],
            "trainer": {"train": {"steps": args.steps}}, "resources": {"nodes": 1, "gpusPerNode": 0},
            "output": {"uri": f"s3://ckpt/{name}"}, "runPolicy": {"backoffLimit": 0}}
    return {"apiVersion": f"{G}/{V}", "kind": "RLJob", "metadata": {"name": name}, "spec": spec}


def setup(cluster, k8s, ns: str) -> None:
    """Namespace with a LongVideoDataset marked Ready (the jobs' dependency)."""
    from kubernetes import client

    cluster.create_namespace(ns)
    custom = client.CustomObjectsApi(k8s)
    custom.create_namespaced_custom_object(G, V, ns, "longvideodatasets", {
        "apiVersion": f"{G}/{V}", "kind": "LongVideoDataset", "metadata": {"name": "ds"},
        "spec": {"source": {"jsonl": "s3://data/train.jsonl"}, "frames": 8, "resources": {"gpusPerNode": 0}}})
    custom.patch_namespaced_custom_object_status(G, V, ns, "longvideodatasets", "ds",
                                                 {"status": {"phase": "Ready", "observedGeneration": 1}})


def install_crds(k8s) -> None:
    import yaml
    from kubernetes import client

    ext = client.ApiextensionsV1Api(k8s)
    for path in sorted((ROOT / "crds").glob("longvideo.dev_*.yaml")):
        ext.create_custom_resource_definition(yaml.safe_load(path.read_text()))
    time.sleep(3)                                         # Established


def wait(fn, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return time.monotonic()
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def succeeded(custom, ns: str) -> int:
    items = custom.list_namespaced_custom_object(G, V, ns, "rljobs")["items"]
    return sum((i.get("status") or {}).get("phase") == "Succeeded" for i in items)


class Operator:
    """The operator in-process (kopf under KopfRunner), with a fresh counting Cluster adapter."""

    def __init__(self, k8s, ns: str):
        from kopf.testing import KopfRunner

        from lvr_operator import handlers
        from lvr_operator.cluster import Cluster, load_client

        self.cluster = handlers.CONFIG["cluster"] = Cluster(load_client(os.environ["KUBECONFIG"]))
        self.runner = KopfRunner(["run", "--standalone", "--namespace", ns, "-m", "lvr_operator.main"],
                                 timeout=120)

    def __enter__(self) -> Operator:
        self.runner.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.runner.__exit__(None, None, None)
        if self.runner.exception is not None:
            raise RuntimeError(f"kopf failed:\n{self.runner.output[-3000:]}") from self.runner.exception


def run(cluster, k8s, ns: str, args: argparse.Namespace, restart: bool) -> dict:
    """Apply args.jobs RLJobs at once; optionally restart the operator when half have their pod."""
    from kubernetes import client

    from lvr_operator import service

    setup(cluster, k8s, ns)
    custom, core, n = client.CustomObjectsApi(k8s), client.CoreV1Api(k8s), args.jobs
    pods, calls = PodWatch(core, ns), Counter()
    service.latencies.clear()
    op = Operator(k8s, ns).__enter__()
    try:
        t0 = time.monotonic()
        for i in range(n):
            custom.create_namespaced_custom_object(G, V, ns, "rljobs", rljob(f"rl-{i:03d}", args))
        if restart:
            wait(lambda: len(pods.first) >= n // 2, args.timeout, f"{n // 2} jobs with a pod")
            op.__exit__()
            calls += op.cluster.calls
            op = Operator(k8s, ns).__enter__()
        t_pods = wait(lambda: len(pods.first) >= n, args.timeout, f"pods of all {n} jobs")
        t_done = wait(lambda: succeeded(custom, ns) >= n, args.timeout, f"all {n} jobs Succeeded")
    finally:
        op.__exit__()
        pods.stop()
    calls += op.cluster.calls
    lat = sorted(service.latencies)
    return {"run": "restart" if restart else "clean", "reads": args.reads, "jobs": n, "pods_s": t_pods - t0, "done_s": t_done - t0,
            "reconciles": len(lat), "p50_ms": 1000 * lat[len(lat) // 2],
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            "calls": {k: v / n for k, v in calls.items()}, "dupes": pods.duplicates()}


def report(results: list[dict]) -> str:
    from lvr_trainer.utils.table import format_table

    main = format_table(
        ["run", "reads", "jobs", "all pods created (s)", "all Succeeded (s)", "reconciles", "p50 reconcile (ms)",
         "p99 reconcile (ms)", "API calls / job", "duplicate pods"],
        [[r["run"], r["reads"], r["jobs"], round(r["pods_s"], 1), round(r["done_s"], 1), r["reconciles"], round(r["p50_ms"], 1),
          round(r["p99_ms"], 1), round(sum(r["calls"].values()), 1), r["dupes"]] for r in results])
    verbs = sorted({v for r in results for v in r["calls"]})
    by_verb = format_table(["run", "reads", *[f"{v} / job" for v in verbs]],
                           [[r["run"], r["reads"], *[round(r["calls"].get(v, 0.0), 1) for v in verbs]]
                            for r in results])
    return main + "\n\n" + by_verb


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=50)
    p.add_argument("--reads", choices=("cache", "list"), default="cache",
                   help="cache: objects, pods and children from the watch-fed cache; list: read per reconcile")
    p.add_argument("--steps", type=int, default=2, help="mock trainer steps per job")
    p.add_argument("--sleep", type=float, default=0.5, help="mock trainer seconds per step")
    p.add_argument("--resync", type=float, default=5.0, help="operator resync interval, seconds")
    p.add_argument("--timeout", type=float, default=300)
    args = p.parse_args()
    os.environ["LVR_RESYNC_SECONDS"] = str(args.resync)
    os.environ["LVR_WATCH_CACHE"] = "1" if args.reads == "cache" else "0"
    from lvr_localcluster.cluster import LocalCluster

    with tempfile.TemporaryDirectory(prefix="lvr-bench-op-") as tmp, LocalCluster(tmp) as cluster:
        os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
        from kubernetes import config
        from kubernetes.config import kube_config

        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(cluster.kubeconfig)     # kopf's login reads it
        k8s = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        install_crds(k8s)
        results = [run(cluster, k8s, "bench-clean", args, restart=False),
                   run(cluster, k8s, "bench-restart", args, restart=True)]
    print(f"\n{args.jobs} RLJobs applied at once; local cluster (kube 1.20, kubelet stand-in), "
          f"{os.cpu_count()} CPU(s), {platform.processor() or platform.machine()}, Python {platform.python_version()}\n")
    print(report(results))
    return 0 if all(r["dupes"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
