"""Creating children: an object of the child's name under another controller is a conflict, never adopted;
a create the API server refuses becomes a condition naming the object, the field and its message, and the
pods of a partly created gang are deleted."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from lvr_operator import service
from lvr_operator.cluster import Cluster, CreateFailed
from lvr_operator.manifests.job import trainer_rbac
from lvr_operator.reconcile.model import Create, CreateFailure, Plan
from op_helpers import NOW, SETTINGS, dataset, job, observed, run

OWNER = {**job(), "metadata": {**job()["metadata"], "uid": "uid-mine"}}


def _api_error(status: int, message: str = "", field: str | None = None) -> ApiException:
    err = ApiException(status=status, reason={403: "Forbidden", 409: "Conflict", 422: "Unprocessable Entity"}[status])
    details = {"causes": [{"field": field, "message": message}]} if field else {}
    err.body = json.dumps({"kind": "Status", "message": message, "details": details})
    return err


class _Core:
    """create_* raise `error`; read_* return `existing` (as the raw-response shape Cluster._raw reads)."""

    def __init__(self, error: ApiException, existing: dict | None = None):
        self.error, self.existing = error, existing

    def __getattr__(self, name):
        if name.startswith("create_namespaced_"):
            def create(*_, **__):
                raise self.error
            return create
        if name.startswith("read_namespaced_"):
            return lambda *_, **__: SimpleNamespace(data=json.dumps(self.existing))
        raise AttributeError(name)


def _cluster(error: ApiException, existing: dict | None = None) -> Cluster:
    cluster = Cluster(client.ApiClient())
    cluster.core = cluster.rbac = _Core(error, existing)
    cluster.post_event = lambda *_: None
    return cluster


def _account(uid: str | None) -> dict:
    sa = trainer_rbac(OWNER, 1)[0]
    refs = [{"kind": "RLJob", "name": "r1", "uid": uid, "controller": True}] if uid else []
    return {**sa, "metadata": {**sa["metadata"], "ownerReferences": refs}}


def test_an_existing_child_of_ours_is_success_and_anyone_elses_is_a_conflict():
    sa = trainer_rbac(OWNER, 1)[0]
    _cluster(_api_error(409), _account("uid-mine")).apply(OWNER, Plan({}, [Create(sa)]))
    for holder, words in (("uid-someone-else", "is controlled by RLJob 'r1'"), (None, "has no controller")):
        with pytest.raises(CreateFailed) as err:
            _cluster(_api_error(409), _account(holder)).apply(OWNER, Plan({}, [Create(sa)]))
        assert err.value.failure.conflict and words in str(err.value) and "not adopted" in str(err.value)


def test_a_refused_create_names_the_object_the_field_and_the_api_servers_message():
    pod = {"kind": "Pod", "metadata": {"name": "r1-rl-worker-0"}}
    error = _api_error(403, 'pods "r1-rl-worker-0" is forbidden: no PriorityClass with name fast was found',
                       "spec.priorityClassName")
    with pytest.raises(CreateFailed) as err:
        _cluster(error).apply(OWNER, Plan({}, [Create(pod)]))
    text = str(err.value)
    assert "Pod 'r1-rl-worker-0' (field spec.priorityClassName): 403" in text and "no PriorityClass" in text


class _RefusesRank1:
    """A Cluster that creates rank 0 and is refused rank 1 (a quota), recording every apply."""

    def __init__(self, status: int):
        self.status, self.applied = status, []

    def apply(self, owner, plan):
        self.applied.append(plan)
        if len(self.applied) == 1:
            failure = CreateFailure("Pod", "r1-rl-worker-1", self.status, "exceeded quota: gpu-quota", "spec")
            raise CreateFailed(failure, [("ConfigMap", "r1-rl-config"), ("Pod", "r1-rl-worker-0")])


def test_a_partly_created_gang_is_deleted_and_the_refusal_is_the_status():
    cluster = _RefusesRank1(403)
    plan = run(job(), observed())
    follow = service.apply_plan(cluster, job(), plan, [], NOW, SETTINGS)
    assert [(a.kind, a.name) for a in follow.actions] == [("Pod", "r1-rl-worker-0")]
    created = next(c for c in follow.status["conditions"] if c["type"] == "Created")
    assert created["status"] == "False" and created["reason"] == "CreateRefused"
    assert "Pod 'r1-rl-worker-1' (field spec): 403 exceeded quota" in created["message"]
    assert follow.status["phase"] == "Pending" and follow.waiting and follow.requeue_after == 30
    assert "startTime" not in follow.status and cluster.applied[1] is follow


def test_an_invalid_child_fails_the_job_as_invalid_spec_until_the_spec_changes():
    follow = service.apply_plan(_RefusesRank1(422), job(), run(job(), observed()), [], NOW, SETTINGS)
    assert follow.status["phase"] == "Failed" and follow.invalid
    invalid = next(c for c in follow.status["conditions"] if c["type"] == "InvalidSpec")
    assert invalid["status"] == "True" and "r1-rl-worker-1" in invalid["message"]


def test_a_refused_preparation_pod_is_named_in_the_datasets_status():
    from lvr_operator.reconcile.dataset import DatasetObserved, reconcile_dataset

    class Refuses:
        def apply(self, owner, plan):
            if plan.actions and hasattr(plan.actions[0], "obj"):
                raise CreateFailed(CreateFailure("Pod", "ds-prep-g1-0", 403, "violates PodSecurity restricted"))

    ds = dataset(phase=None)
    plan = reconcile_dataset(ds, DatasetObserved(NOW), SETTINGS)
    follow = service.apply_plan(Refuses(), ds, plan, [], NOW, SETTINGS)
    assert follow.status["phase"] == "Pending" and "violates PodSecurity" in follow.status["message"]


def test_a_config_map_of_ours_is_replaced_when_the_create_asks_for_it():
    from lvr_operator.manifests.job import config_map

    replaced = []

    class Core(_Core):
        def replace_namespaced_config_map(self, name, namespace, body):
            replaced.append((name, body["data"]))

    cm = config_map(OWNER, SimpleNamespace(model_dump=lambda mode: {"train": {"steps": 7}}))
    mine = {**cm, "metadata": {**cm["metadata"], "ownerReferences": [{"uid": "uid-mine", "controller": True}]}}
    cluster = _cluster(_api_error(409), mine)
    cluster.core = Core(_api_error(409), mine)
    cluster.apply(OWNER, Plan({}, [Create(cm)]))
    assert replaced == []                                   # a plain create leaves an existing one alone
    cluster.apply(OWNER, Plan({}, [Create(cm, replace=True)]))
    assert replaced == [("r1-rl-config", cm["data"])]
