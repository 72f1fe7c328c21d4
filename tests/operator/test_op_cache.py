"""The watch-fed cache (lvr_operator/cache.py), the operator's own kopf registry, and coalesced reconciles:
pure tests, kopf's indices stood in for by dicts of lists."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

import kopf
import pytest
from op_helpers import SETTINGS, job

from lvr_operator import service
from lvr_operator.cache import (CHILD_INDEXES, INDEXES, PENDING_SECONDS, POD_INDEX, RESOURCE_INDEXES, WatchCache,
                                child_entry, resource_entry)
from lvr_operator.cluster import Cluster
from lvr_operator.handlers import build_registry
from lvr_operator.manifests.common import LABEL_KIND, LABEL_MANAGED_BY, LABEL_OWNER, MANAGED_BY
from lvr_operator.reconcile.model import Create, Plan


def _child(kind: str, name: str, owner: str = "r1", uid: str = "uid-job", **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": kind, **extra,
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": "5",
                         "labels": {LABEL_KIND: "rljob", LABEL_OWNER: owner, LABEL_MANAGED_BY: MANAGED_BY},
                         "ownerReferences": [{"kind": "RLJob", "name": owner, "uid": uid, "controller": True}]}}


class _Indices(dict):
    """kopf's indices as the cache reads them: id -> {key: [values]}."""

    def __init__(self) -> None:
        super().__init__({i: {} for i in INDEXES})

    def put(self, index: str, entry: dict[Any, Any]) -> None:
        for key, value in entry.items():
            self[index].setdefault(key, []).append(value)


def _versioned(obj: dict[str, Any], version: int, **status: Any) -> dict[str, Any]:
    return {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(version)}, "status": status}


def test_children_are_filed_under_their_owner_and_strangers_are_not():
    pod = _child("Pod", "r1-rl-worker-0")
    assert child_entry(pod) == {("ns", "rljob", "r1"): pod}
    assert child_entry({"kind": "Pod", "metadata": {"name": "x", "namespace": "ns", "labels": {}}}) is None
    assert resource_entry(job()) == {("ns", "r1"): job()}


def test_the_newest_of_watched_and_written_status_is_read():
    indices, owner = _Indices(), job()
    cache = WatchCache(indices)
    indices.put(RESOURCE_INDEXES["RLJob"], resource_entry(_versioned(owner, 10, phase="Pending")))
    cache.wrote(_versioned(owner, 12, phase="Created"))
    assert cache.resource("RLJob", "ns", "r1")["status"] == {"phase": "Created"}     # the watch lags our write
    indices[RESOURCE_INDEXES["RLJob"]][("ns", "r1")] = [_versioned(owner, 13, phase="Created")]   # spec edit
    assert cache.resource("RLJob", "ns", "r1")["metadata"]["resourceVersion"] == "13"
    indices[RESOURCE_INDEXES["RLJob"]].clear()                                      # deleted
    cache.wrote(_versioned(owner, 14, phase="Running"))
    assert cache.resource("RLJob", "ns", "r1") is None


def test_created_children_are_answered_until_the_watch_shows_them():
    clock = [0.0]
    indices, owner = _Indices(), job()
    cache = WatchCache(indices, clock=lambda: clock[0])
    pod, sa = _child("Pod", "r1-rl-worker-0"), _child("ServiceAccount", "r1-rl-trainer")
    cache.created(owner, pod)
    cache.created(owner, sa)
    assert [p["metadata"]["name"] for p in cache.pods(owner)] == ["r1-rl-worker-0"]
    assert cache.children(owner) == {("ServiceAccount", "r1-rl-trainer")}
    indices.put(POD_INDEX, child_entry(pod))
    indices.put(CHILD_INDEXES["ServiceAccount"], child_entry(sa))
    assert len(cache.pods(owner)) == 1 and cache.children(owner) == {("ServiceAccount", "r1-rl-trainer")}
    indices[POD_INDEX].clear()                        # seen, then deleted: no longer answered
    assert cache.pods(owner) == []
    cache.created(owner, _child("Pod", "r1-rl-worker-1"))
    clock[0] = PENDING_SECONDS + 1                    # never shown by the watch: forgotten in time
    assert cache.pods(owner) == []
    assert cache.pods(job(name="other")) == []


class _FakeApi:
    """Records the adapter's create/replace calls by kind and name."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def __getattr__(self, attr: str):
        def call(*args: Any, **_: Any) -> Any:
            body = args[-1]
            with self.lock:
                self.calls.append((attr, body["metadata"]["name"] if isinstance(body, dict) else str(body)))
        return call


def _adapter(indices: _Indices) -> tuple[Cluster, _FakeApi]:
    cluster = Cluster.__new__(Cluster)
    Cluster.__init__(cluster, api=object())
    fake = _FakeApi()
    cluster.core = cluster.rbac = cluster.custom = fake
    cluster.cache = WatchCache(indices)
    cluster.post_event = lambda *_: None
    return cluster, fake


def test_a_cached_config_map_of_ours_is_left_alone_or_replaced_without_a_create():
    indices, owner = _Indices(), job()
    cm = _child("ConfigMap", "r1-rl-config", data={"trainer.yaml": "a"})
    indices.put(CHILD_INDEXES["ConfigMap"], child_entry(cm))
    cluster, fake = _adapter(indices)
    same = {k: v for k, v in cm.items() if k != "metadata"} | {"metadata": {"name": "r1-rl-config"}}
    cluster.apply(owner, Plan(status={}, actions=[Create(same, replace=True)]))
    assert fake.calls == []
    changed = {**same, "data": {"trainer.yaml": "b"}}
    cluster.apply(owner, Plan(status={}, actions=[Create(changed, replace=True)]))
    assert fake.calls == [("replace_namespaced_config_map", "r1-rl-config")]
    assert cluster.calls["create"] == 0 and cluster.calls["replace"] == 1


def test_children_are_created_together_then_role_bindings_then_pods_one_by_one():
    cluster, fake = _adapter(_Indices())
    owner = job()
    children = [Create({"kind": k, "metadata": {"name": f"c-{k}"}}) for k in
                ("ConfigMap", "Service", "ServiceAccount", "Role", "RoleBinding")]
    pods = [Create({"kind": "Pod", "metadata": {"name": f"r1-rl-worker-{r}"}}) for r in range(2)]
    cluster.apply(owner, Plan(status={}, actions=[*children, *pods]))
    assert sorted(fake.calls[:4]) == sorted((f"create_namespaced_{s}", f"c-{k}") for k, s in (
        ("ConfigMap", "config_map"), ("Service", "service"), ("ServiceAccount", "service_account"),
        ("Role", "role")))
    assert fake.calls[4] == ("create_namespaced_role_binding", "c-RoleBinding")     # checked against its Role
    assert fake.calls[5:] == [("create_namespaced_pod", "r1-rl-worker-0"), ("create_namespaced_pod", "r1-rl-worker-1")]
    assert len(cluster.cache.pods(owner)) == 2 and len(cluster.cache.children(owner)) == 5     # until watched
    assert cluster.calls["create"] == 7


def test_a_reconcile_already_waiting_absorbs_later_triggers(monkeypatch):
    """Pod events and timer ticks for an object whose reconcile waits for the lock cost nothing."""
    runs: list[str] = []
    entered, release = threading.Event(), threading.Event()

    def slow(*_: Any, **__: Any) -> None:
        runs.append("run")
        if len(runs) == 1:
            entered.set()
            release.wait(5)

    monkeypatch.setattr(service, "_reconcile_locked", slow)
    first = threading.Thread(target=service.reconcile_object, args=(None, "RLJob", "ns", "r9", SETTINGS))
    first.start()
    entered.wait(5)
    queued = threading.Thread(target=service.reconcile_object, args=(None, "RLJob", "ns", "r9", SETTINGS),
                              kwargs={"coalesce": True})
    queued.start()
    while ("RLJob", "ns", "r9") not in service._queued:
        pass
    for _ in range(5):          # a burst of events while one waits: dropped at once
        assert service.reconcile_object(None, "RLJob", "ns", "r9", SETTINGS, coalesce=True) is None
    release.set()
    first.join(5)
    queued.join(5)
    assert runs == ["run", "run"]


def test_the_operator_has_its_own_registry_and_importing_it_registers_nothing():
    code = ("import kopf; before = kopf.get_default_registry(); "
            "n = lambda r: sum(len(list(getattr(r, k).get_all_handlers())) for k in vars(r) "
            "if hasattr(getattr(r, k), 'get_all_handlers')); base = n(before); "
            "import lvr_operator.handlers, lvr_operator.runner, lvr_operator.cluster, lvr_operator.service; "
            "assert kopf.get_default_registry() is before and n(before) == base, n(before)")
    subprocess.run([sys.executable, "-c", code], check=True)
    registry = build_registry(SETTINGS)
    assert isinstance(registry, kopf.OperatorRegistry) and registry is not kopf.get_default_registry()
    ids = {h.id for h in registry._indexing.get_all_handlers()}
    assert ids == set(INDEXES)


def test_a_create_the_api_server_answers_not_found_is_retried_not_taken_for_done():
    """A RoleBinding whose Role the API server cannot find yet (its escalation check answers 404)."""
    from kubernetes.client.rest import ApiException

    from lvr_operator.cluster import RetryLater

    cluster, fake = _adapter(_Indices())

    def not_found(*_: Any, **__: Any) -> None:
        raise ApiException(status=404, reason="Not Found")
    fake.create_namespaced_role_binding = not_found
    binding = Create({"kind": "RoleBinding", "metadata": {"name": "r1-rl-trainer"}})
    with pytest.raises(RetryLater):
        cluster.apply(job(), Plan(status={}, actions=[binding]))
    assert cluster.cache.children(job()) == set()


def test_a_refused_status_patch_stops_before_role_bindings_and_pods():
    """The first wave of children goes with the status patch; nothing that depends on it follows a refusal."""
    from kubernetes.client.rest import ApiException

    cluster, fake = _adapter(_Indices())

    def refused(*_: Any, **__: Any) -> None:
        raise ApiException(status=422, reason="Unprocessable Entity")
    fake.patch_namespaced_custom_object_status = refused
    actions = [Create({"kind": k, "metadata": {"name": f"c-{k}"}}) for k in ("ConfigMap", "Role", "RoleBinding")]
    cluster.apply(job(), Plan(status={"phase": "Created"}, actions=[*actions, Create({"kind": "Pod", "metadata": {
        "name": "r1-rl-worker-0"}})]))
    assert {name for _, name in fake.calls} <= {"c-ConfigMap", "c-Role"}


def test_pods_and_children_are_filtered_by_the_api_server():
    """The watches that feed the cache ask only for objects with our managed-by label."""
    from kopf._cogs.structs.references import Resource

    from lvr_operator.handlers import configure

    settings = kopf.OperatorSettings()
    configure(settings)
    ours = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
    for group, plural in [("", "pods"), ("", "configmaps"), ("rbac.authorization.k8s.io", "rolebindings")]:
        assert list(settings.watching.label_selectors.collect(Resource(group, "v1", plural))) == [ours]
    assert not list(settings.watching.label_selectors.collect(Resource("longvideo.dev", "v1alpha1", "rljobs")))
