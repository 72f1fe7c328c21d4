"""Operator restarts mid-reconcile: the process dies just before its N-th API write, for every N over a
whole job lifecycle (create the gang, run, a worker fails, gang restart, success), and a fresh operator
carries on. Deterministic child names + check-then-create must leave no duplicate pod or child, and
every job must still succeed.

`CrashingCluster` is the apply shell with a fault hook: before write number `at` (0-based; creates,
deletes, status patches and events all count) it raises `Crash`, and every later call raises too (a
dead process makes no more calls). The driver then swaps in a new `Cluster`, as a restarted operator
would be. A pod watch records every pod ever created, so a duplicate that lived only briefly is caught.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest
from kubernetes import client, watch
from urllib3.exceptions import ProtocolError
from lvr_localcluster.pytest_plugin import wait_until
from op_cluster import OWNER, create, job_spec, owned_pods, ready_dataset, status, wait_phase, write_jsonl

from lvr_operator import handlers
from lvr_operator.api.kinds import kind_by_name
from lvr_operator.cluster import Cluster, RetryLater
from lvr_operator.manifests.common import LABEL_ATTEMPT, LABEL_RANK
from lvr_operator.service import reconcile_object
from lvr_operator.settings import OperatorSettings

pytestmark = pytest.mark.cluster
SETTINGS = OperatorSettings(resync_seconds=1)
WRITES = frozenset({"create", "delete", "patch", "event"})
NODES = 2


class Crash(Exception):
    """The operator process died (injected)."""


class CrashingCluster(Cluster):
    def __init__(self, api: client.ApiClient, at: int | None):
        super().__init__(api)
        self.at, self.writes, self.dead, self.killed_before = at, 0, False, ""

    def _count(self, what: str) -> None:
        if self.dead:
            raise Crash("already dead")
        if what in WRITES:
            if self.writes == self.at:
                self.dead, self.killed_before = True, what
                raise Crash(f"killed before write {self.at}")
            self.writes += 1
        super()._count(what)


def test_operator_killed_before_every_write_of_a_dataset_reconcile(crds, kube_namespace, k8s_client, tmp_path):
    """The same for LongVideoDataset: one preprocessing pod per generation and attempt, never two."""
    ns, api, core = kube_namespace, crds, client.CoreV1Api(k8s_client)
    spec = {"source": {"jsonl": write_jsonl(tmp_path)}, "frames": 8, "resources": {"gpusPerNode": 0}}
    recorder = PodRecorder(core, ns)
    try:
        create(api, ns, "longvideodatasets", "LongVideoDataset", "clean", spec)
        clean = CrashingCluster(k8s_client, None)
        assert _drive(k8s_client, core, ns, {"clean": clean}, 90, "LongVideoDataset")["clean"]["phase"] == "Ready"
        clusters: dict[str, Cluster] = {}
        for at in range(clean.writes):
            create(api, ns, "longvideodatasets", "LongVideoDataset", f"kill-{at}", spec)
            clusters[f"kill-{at}"] = CrashingCluster(k8s_client, at)
        dying = list(clusters.values())
        done = _drive(k8s_client, core, ns, clusters, 120, "LongVideoDataset")
    finally:
        recorder.stop()
    assert {n: s["phase"] for n, s in done.items()} == {n: "Ready" for n in clusters}
    assert all(s["rows"]["valid"] == 1 and s["attempts"] == 1 for s in done.values())
    assert {c.killed_before for c in dying} >= {"create", "patch", "event"}
    assert all(n == 1 for n in recorder.added.values()) and len(recorder.added) == len(clusters) + 1


class DiesBeforeCreating(CrashingCluster):
    """Dies just before creating the child `kind`/`name` (and makes no call after that)."""

    def __init__(self, api: client.ApiClient, kind: str, name: str):
        super().__init__(api, None)
        self.target = (kind, name)

    def _act(self, owner: dict[str, Any], action: Any) -> None:
        if getattr(action, "key", None) == self.target:
            self.dead, self.killed_before = True, "create"
        super()._act(owner, action)


class PodRecorder:
    """Counts ADDED pod events per (owner, rank, attempt) in a namespace, from a watch thread."""

    def __init__(self, core: client.CoreV1Api, ns: str):
        self.added: Counter[tuple[str, str, str]] = Counter()
        self._stop, self._watch = threading.Event(), watch.Watch()
        self._thread = threading.Thread(target=self._run, args=(core, ns), daemon=True)
        self._thread.start()

    def _run(self, core: client.CoreV1Api, ns: str) -> None:
        version = None      # resume where the last stream ended, so no ADDED is seen twice or missed
        while not self._stop.is_set():
            try:
                for ev in self._watch.stream(core.list_namespaced_pod, ns, timeout_seconds=5,
                                             **({"resource_version": version} if version else {})):
                    pod = ev["object"]
                    version = pod.metadata.resource_version
                    labels = pod.metadata.labels or {}
                    if ev["type"] == "ADDED" and OWNER in labels:
                        self.added[(labels[OWNER], labels.get(LABEL_RANK, ""), labels.get(LABEL_ATTEMPT, ""))] += 1
            except ProtocolError:      # the apiserver ended the stream; start another
                continue

    def stop(self) -> None:
        self._stop.set()
        self._watch.stop()
        self._thread.join(10)


def _assert_no_duplicates(core: client.CoreV1Api, ns: str, job: str, max_pods: int = NODES) -> None:
    pods = owned_pods(core, ns, job)
    ranks = [p.metadata.labels.get(LABEL_RANK) for p in pods]
    assert len(pods) <= max_pods and len(set(ranks)) == len(ranks), f"{job}: pods {[p.metadata.name for p in pods]}"
    kinds = Counter(k for k in ("config_map", "service", "service_account")
                    for _ in getattr(core, f"list_namespaced_{k}")(ns, label_selector=f"{OWNER}={job}").items)
    assert all(n <= 1 for n in kinds.values()), f"{job}: children {kinds}"


def _drive(k8s_client, core, ns: str, clusters: dict[str, Cluster], timeout: float,
           kind: str = "SFTJob") -> dict[str, dict]:
    """Reconcile every object in turn (as the operator's timer would) until all are terminal."""
    deadline, done, plural = time.monotonic() + timeout, {}, kind_by_name(kind).plural
    max_pods = NODES if kind_by_name(kind).is_job else 1
    while len(done) < len(clusters) and time.monotonic() < deadline:
        for name in [n for n in clusters if n not in done]:
            try:
                reconcile_object(clusters[name], kind, ns, name, SETTINGS)
            except Crash:
                clusters[name] = Cluster(k8s_client)          # the restarted operator
            except RetryLater:                                # e.g. the new ServiceAccount has no token yet
                pass
            _assert_no_duplicates(core, ns, name, max_pods)
            phase = (st := status(client.CustomObjectsApi(k8s_client), ns, plural, name)).get("phase")
            if phase in ("Succeeded", "Failed", "Ready"):
                done[name] = st
        time.sleep(0.3)
    return done


def _flaky_job(api, ns: str, name: str) -> None:
    create(api, ns, "sftjobs", "SFTJob", name, job_spec(
        args=["--fail-attempts", "1", "--steps", "2", "--sleep", "0.1"],
        resources={"nodes": NODES, "gpusPerNode": 0}, runPolicy={"backoffLimit": 2, "backoffSeconds": 1}))


def test_operator_killed_before_every_write_of_a_lifecycle(crds, kube_namespace, k8s_client, tmp_path):
    ns, api, core = kube_namespace, crds, client.CoreV1Api(k8s_client)
    ready_dataset(api, ns, tmp_path)
    recorder = PodRecorder(core, ns)
    try:
        _flaky_job(api, ns, "clean")
        clean = CrashingCluster(k8s_client, None)
        assert _drive(k8s_client, core, ns, {"clean": clean}, 120)["clean"]["phase"] == "Succeeded"
        total = clean.writes
        assert total >= 12, f"a lifecycle with a gang restart made only {total} writes"
        clusters: dict[str, Cluster] = {}
        for at in range(total):
            _flaky_job(api, ns, f"kill-{at}")
            clusters[f"kill-{at}"] = CrashingCluster(k8s_client, at)
        dying = list(clusters.values())
        done = _drive(k8s_client, core, ns, clusters, 300)
    finally:
        recorder.stop()
    assert {n: s["phase"] for n, s in done.items()} == {n: "Succeeded" for n in clusters}
    assert all(s["restarts"] == 1 for s in done.values())
    # later write numbers may not exist in a run (progress patches depend on timing); those that fired
    # must have hit every kind of write
    assert {c.killed_before for c in dying} >= WRITES
    dupes = {k: n for k, n in recorder.added.items() if n > 1}
    assert not dupes, f"pods created twice for the same (job, rank, attempt): {dupes}"
    for name in ["clean", *clusters]:     # the whole second gang ran (rank 1 of the first may never have
        ranks = {r for (o, r, a) in recorder.added if o == name and a == "1"}    # been created: see kill-7)
        assert ranks == {"0", "1"}, f"{name}: second attempt ranks {ranks}"


@pytest.mark.parametrize("kind,child", [("ServiceAccount", "j-sft-trainer"), ("Pod", "j-sft-worker-1")])
def test_kopf_operator_restarted_mid_gang_creation(kind, child, kopf_operator, kube_cluster, kube_namespace, crds,
                                                   k8s_client, tmp_path, monkeypatch):
    """The real operator (kopf) dies while creating the gang; a new one finishes the job, no duplicates."""
    from kubernetes.config import kube_config

    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kube_cluster.kubeconfig))
    monkeypatch.setenv("LVR_RESYNC_SECONDS", "2")
    monkeypatch.setitem(handlers.CONFIG, "cluster", None)
    ns, api, core = kube_namespace, crds, client.CoreV1Api(k8s_client)
    ready_dataset(api, ns, tmp_path)
    recorder = PodRecorder(core, ns)
    try:
        dying = handlers.CONFIG["cluster"] = DiesBeforeCreating(k8s_client, kind, child)
        with kopf_operator("lvr_operator.main", namespace=ns, timeout=60):
            _flaky_job(api, ns, "j")
            wait_until(lambda: dying.dead, 30, f"the operator to reach the creation of {kind} {child}")
        assert len(owned_pods(core, ns, "j")) == (1 if kind == "Pod" else 0)     # a half-created gang
        handlers.CONFIG["cluster"] = None                    # a new process: a fresh client
        with kopf_operator("lvr_operator.main", namespace=ns, timeout=120):
            final = wait_phase(api, ns, "sftjobs", "j", "Succeeded", 120)
    finally:
        recorder.stop()
    assert final["restarts"] == 1
    assert all(n == 1 for n in recorder.added.values()), recorder.added
