"""The watch-fed cache (lvr_operator/cache.py): it answers from watch events, forgets deleted objects, is
whole again after a restart (kopf's initial listing), a child created but not yet seen by the watch is
not created again, and the object being reconciled comes from the watch only when it is the newest
version the operator has seen.

The watch is kopf's own index store (`OperatorIndexer`, what `@kopf.index` fills at run time), fed the way
kopf feeds it: an object's entry replaced on every event, dropped on DELETED. The API server behind
`Cluster` is a small fake that records every call (the cluster suites run the real one)."""

from __future__ import annotations

import copy
import itertools
import json
import threading
import time
from types import SimpleNamespace
from typing import Any

from kopf._core.engines.indexing import OperatorIndexer
from kubernetes import client

from lvr_operator import service
from lvr_operator.cache import (CHILD_INDEXES, INDEXES, PENDING_SECONDS, POD_INDEX, RESOURCE_INDEXES, WatchCache,
                                child_entry, pod_entry, resource_entry)
from lvr_operator.cluster import Cluster, _stages
from lvr_operator.manifests.job import config_map, trainer_rbac
from lvr_operator.manifests.job_pod import worker_pod
from lvr_operator.reconcile.model import Create, Delete, Plan
from op_helpers import NOW, SETTINGS, created_pods, dataset, job, observed, pod_in, run

JOB = job(resources={"nodes": 1, "gpusPerNode": 0}, trainer={"train": {"steps": 10}})
JOB["metadata"]["resourceVersion"] = "1"
_uids = (f"uid-{i}" for i in itertools.count())


def _pod(rank: int = 0, owner: dict = JOB, state: str = "pending") -> dict[str, Any]:
    from lvr_operator.api.jobs import RLJobSpec

    spec = RLJobSpec.model_validate(owner["spec"])
    pod = pod_in(worker_pod(owner, spec, rank, 0, SETTINGS, None, None), state)
    pod["metadata"]["uid"] = next(_uids)
    return pod


class Watch:
    """kopf's indices for the cache, and the events that change them."""

    def __init__(self):
        self.indexers = {name: OperatorIndexer() for name in INDEXES}

    @property
    def indices(self) -> dict[str, Any]:
        return {name: ix.index for name, ix in self.indexers.items()}

    def _route(self, body: dict) -> tuple[OperatorIndexer, Any]:
        if body["kind"] == "Pod":
            return self.indexers[POD_INDEX], pod_entry(body)
        if body["kind"] in CHILD_INDEXES:
            return self.indexers[CHILD_INDEXES[body["kind"]]], child_entry(body)
        return self.indexers[RESOURCE_INDEXES[body["kind"]]], resource_entry(body)

    def event(self, type_: str | None, body: dict) -> None:
        indexer, entry = self._route(body)
        meta = body["metadata"]
        key = (meta.get("namespace"), meta["name"], meta.get("uid"))
        if type_ == "DELETED" or entry is None:
            indexer.discard(key)
        else:
            indexer.replace(key, entry)


class FakeApi:
    """The API server's side of Cluster: creates keep the object (with a uid), custom objects are read and
    status-patched, every call is recorded. Nothing here is listed: a list call fails the test."""

    def __init__(self, *objects: dict):
        self.objects = {(o["kind"], o["metadata"]["name"]): copy.deepcopy(o) for o in objects}
        self.created: list[tuple[str, str]] = []
        self.deleted: list[str] = []
        self.replaced: list[str] = []

    def __getattr__(self, name: str):
        if name.startswith("create_namespaced_"):
            return self._create
        if name.startswith("delete_namespaced_"):
            return lambda pod_name, ns: self.deleted.append(pod_name)
        if name.startswith("replace_namespaced_"):
            return lambda obj_name, ns, body: self.replaced.append(obj_name)
        raise AssertionError(f"the cache should have answered, not the API server ({name})")

    def _create(self, namespace: str, body: dict) -> dict:
        key = (body["kind"], body["metadata"]["name"])
        assert key not in self.objects, f"{key} created twice"
        obj = copy.deepcopy(body)
        obj["metadata"].update(uid=next(_uids), resourceVersion="1")
        self.objects[key] = obj
        self.created.append(key)
        return obj

    def get_namespaced_custom_object(self, group, version, ns, plural, name, **_):
        return SimpleNamespace(data=json.dumps(self.objects[("RLJob", name)]))

    def patch_namespaced_custom_object_status(self, group, version, ns, plural, name, body):
        return self.change(name, lambda obj: obj.setdefault("status", {}).update(body["status"]))

    def change(self, name: str, how) -> dict:
        """Change the RLJob (a status patch, or someone else's write): a new resourceVersion."""
        obj = self.objects[("RLJob", name)]
        how(obj)
        obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(obj)


def _cluster(api: FakeApi, watch: Watch | None) -> Cluster:
    cache = WatchCache()
    if watch is not None:
        cache.follow(watch.indices)
    cluster = Cluster(client.ApiClient(), cache)
    cluster.core = cluster.rbac = cluster.custom = api
    cluster.post_event = lambda *_: None
    return cluster


def test_pods_and_children_are_answered_from_watch_events():
    watch, cache = Watch(), WatchCache()
    cache.follow(watch.indices)
    pod, other = _pod(), _pod(owner=job(name="r2"))
    watch.event("ADDED", pod)
    watch.event("ADDED", other)
    for obj in trainer_rbac(JOB, 1):
        watch.event("ADDED", {**obj, "metadata": {**obj["metadata"], "uid": next(_uids)}})
    assert [p["metadata"]["name"] for p in cache.pods(JOB)] == ["r1-rl-worker-0"]
    assert cache.children(JOB) == {("ServiceAccount", "r1-rl-trainer"), ("Role", "r1-rl-trainer"),
                                   ("RoleBinding", "r1-rl-trainer")}
    watch.event("MODIFIED", {**pod_in(pod, "running"), "metadata": pod["metadata"]})
    assert cache.pods(JOB)[0]["status"]["phase"] == "Running"
    cache.pods(JOB)[0]["status"]["phase"] = "changed by a caller"          # callers get copies
    assert cache.pods(JOB)[0]["status"]["phase"] == "Running"
    watch.event("ADDED", dataset())
    assert cache.get("LongVideoDataset", "ns", "ds")["status"]["phase"] == "Ready"
    assert cache.get("LongVideoDataset", "ns", "missing") is None


def test_a_deleted_object_leaves_the_cache():
    watch, cache = Watch(), WatchCache()
    cache.follow(watch.indices)
    pod, sa = _pod(), trainer_rbac(JOB, 1)[0]
    sa["metadata"]["uid"] = next(_uids)
    watch.event("ADDED", pod)
    watch.event("ADDED", sa)
    watch.event("DELETED", pod)
    watch.event("DELETED", sa)
    assert cache.pods(JOB) == [] and cache.children(JOB) == set()


def test_a_reconcile_reads_nothing_from_the_api_server_but_the_object_itself():
    api, watch = FakeApi(JOB), Watch()
    watch.event(None, dataset())
    cluster = _cluster(api, watch)
    service.reconcile_object(cluster, "RLJob", "ns", "r1", SETTINGS, now=NOW)
    assert set(cluster.calls) == {"get", "create", "patch"} and cluster.calls["get"] == 1     # the RLJob only


def test_the_reconciled_object_comes_from_the_watch_only_when_it_is_the_newest_version_seen():
    api, watch = FakeApi(JOB), Watch()
    for obj in (dataset(), JOB):
        watch.event(None, obj)
    cluster = _cluster(api, watch)

    def reconcile_reads() -> int:
        before = cluster.calls["get"]
        service.reconcile_object(cluster, "RLJob", "ns", "r1", SETTINGS, now=NOW)
        return cluster.calls["get"] - before

    assert reconcile_reads() == 1                  # never read before: from the API server
    assert cluster.get_cr("RLJob", "ns", "r1")["status"]["phase"] == "Created"     # not the watched Pending
    watch.event("MODIFIED", api.objects[("RLJob", "r1")])                        # our status write, watched
    assert reconcile_reads() == 0
    watch.event("MODIFIED", api.change("r1", lambda o: o["metadata"].setdefault("annotations", {}).update(a="b")))
    assert reconcile_reads() == 1                  # someone else wrote since: read it afresh
    assert reconcile_reads() == 0


def test_a_child_created_but_not_yet_watched_is_not_created_again():
    api, watch = FakeApi(JOB), Watch()
    watch.event(None, dataset())
    cluster = _cluster(api, watch)
    service.reconcile_object(cluster, "RLJob", "ns", "r1", SETTINGS, now=NOW)
    assert len(api.created) == 6                                # ConfigMap, Service, RBAC (3), the pod
    service.reconcile_object(cluster, "RLJob", "ns", "r1", SETTINGS, now=NOW)      # before any watch event
    assert len(api.created) == 6 and len(cluster.pods(JOB)) == 1
    watch.event("ADDED", api.objects[("Pod", "r1-rl-worker-0")])                  # the watch catches up
    assert len(cluster.pods(JOB)) == 1                          # the watched copy, not both
    assert len(cluster.children(JOB)) == 5


def test_a_create_the_watch_never_confirms_is_dropped_when_the_pod_is_deleted_or_after_a_while():
    now = [0.0]
    cache = WatchCache(clock=lambda: now[0])
    cache.follow(Watch().indices)
    first, second = _pod(0), _pod(0)
    cache.created(JOB, first)
    cache.forget(first["metadata"]["uid"])              # created and deleted within one kopf batch
    assert cache.pods(JOB) == []
    cache.created(JOB, second)
    now[0] = PENDING_SECONDS + 1
    assert cache.pods(JOB) == []


def test_a_pod_we_deleted_reads_as_deleting_until_the_watch_says_so():
    watch = Watch()
    pod = _pod(state="running")
    watch.event("ADDED", pod)
    api = FakeApi(JOB)
    cluster = _cluster(api, watch)
    cluster.apply(JOB, Plan({}, [Delete("Pod", "r1-rl-worker-0")]))
    assert api.deleted == ["r1-rl-worker-0"] and cluster.pods(JOB)[0]["metadata"]["deletionTimestamp"]
    watch.event("DELETED", pod)
    assert cluster.pods(JOB) == []


def test_after_a_restart_the_cache_is_whole_before_the_first_reconcile():
    """kopf runs no handler before every index has its initial listing: a new operator (new indices, new
    cache) sees the gang its predecessor created and creates nothing."""
    api, old = FakeApi(JOB), Watch()
    old.event(None, dataset())
    service.reconcile_object(_cluster(api, old), "RLJob", "ns", "r1", SETTINGS, now=NOW)
    new = Watch()
    for obj in [dataset(), *(o for k, o in api.objects.items() if k[0] != "RLJob")]:
        new.event(None, obj)                                    # the initial listing (type None)
    restarted = _cluster(api, new)
    assert len(restarted.pods(JOB)) == 1 and len(restarted.children(JOB)) == 5
    service.reconcile_object(restarted, "RLJob", "ns", "r1", SETTINGS, now=NOW)
    assert len(api.created) == 6 and "list" not in restarted.calls


def test_without_kopfs_indices_the_cluster_lists_from_the_api_server():
    listed = []
    api = FakeApi(JOB)
    cluster = _cluster(api, None)                               # a cache never bound (no kopf operator)
    cluster.core = SimpleNamespace(list_namespaced_pod=None)
    cluster._raw = lambda what, fn, *a, **kw: listed.append(what) or {"items": []}
    assert cluster.pods(JOB) == [] and listed == ["list"]
    cache = WatchCache()
    cache.follow({POD_INDEX: {}})                               # some indices only: not ready
    assert not cache.ready


def test_a_config_the_watch_shows_as_ours_is_replaced_without_a_create_first():
    watch = Watch()
    cm = config_map(JOB, SimpleNamespace(model_dump=lambda mode: {"train": {"steps": 10}}))
    watch.event("ADDED", {**cm, "metadata": {**cm["metadata"], "uid": next(_uids)}})
    api = FakeApi(JOB)
    _cluster(api, watch).apply(JOB, Plan({}, [Create(cm, replace=True)]))
    assert api.replaced == ["r1-rl-config"] and api.created == []
    stranger = {**JOB, "metadata": {**JOB["metadata"], "uid": "uid-other-job-of-that-name"}}
    _cluster(api, watch).apply(stranger, Plan({}, [Create(cm, replace=True)]))
    assert api.created == [("ConfigMap", "r1-rl-config")]      # not ours: created (a conflict, never adopted)


def test_children_other_than_pods_are_created_together_then_the_pods_in_rank_order():
    plan = run(job(), observed())                              # a 2-node gang, nothing created yet
    stages = [[(a.obj["kind"], a.obj["metadata"]["name"]) for a in stage] for stage in _stages(plan.actions)]
    assert [k for k, _ in stages[0]] == ["ConfigMap", "Service", "ServiceAccount", "Role", "RoleBinding"]
    assert stages[1:] == [[("Pod", p["metadata"]["name"])] for p in created_pods(plan)]


class _Gone:
    """A Cluster whose object is gone: a reconcile reads it once and stops."""

    def __init__(self):
        self.reads = 0

    def get_cr(self, kind, namespace, name):
        self.reads += 1


def test_a_burst_of_pod_events_costs_one_reconcile():
    cluster, key = _Gone(), ("RLJob", "ns", "burst")
    with service._locks[key]:                                  # a reconcile of the job is running
        waiting = threading.Thread(target=service.reconcile_after_event, args=(cluster, *key, SETTINGS))
        waiting.start()
        while key not in service._queued:
            time.sleep(0.01)
        for _ in range(3):                                     # more pod events meanwhile: skipped
            assert service.reconcile_after_event(cluster, *key, SETTINGS) is None
        assert cluster.reads == 0
    waiting.join(5)
    assert cluster.reads == 1 and key not in service._queued
    service.reconcile_after_event(cluster, *key, SETTINGS)     # nothing waits now: a reconcile of its own
    assert cluster.reads == 2
