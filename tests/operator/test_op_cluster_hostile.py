"""Hostile and unlucky input against the operator on the local cluster (a real 1.20 API server): every
resource runs, succeeds or says why within 60 s, and each deletion finishes within 30 s."""

from __future__ import annotations

import time

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from op_cluster import G, V, create, dataset, job_spec, status, wait_phase

from lvr_localcluster.pytest_plugin import wait_until

pytestmark = pytest.mark.cluster


def _condition(api, ns: str, plural: str, name: str, type_: str, reason: str, timeout: float = 60) -> dict:
    def found():
        return next((c for c in status(api, ns, plural, name).get("conditions") or []
                     if c["type"] == type_ and c["reason"] == reason), None)
    return wait_until(found, timeout, f"{plural}/{name} condition {type_} {reason}", interval=0.5)


def _deleted_quickly(api, ns: str, plural: str, name: str) -> None:
    api.delete_namespaced_custom_object(G, V, ns, plural, name)
    started = time.monotonic()

    def gone():
        try:
            api.get_namespaced_custom_object(G, V, ns, plural, name)
        except ApiException as err:
            return err.status == 404
        return False
    wait_until(gone, 30, f"{plural}/{name} deleted")
    assert time.monotonic() - started < 30


def test_names_that_cannot_make_children_are_refused_by_the_crd(crds, kube_namespace):
    for name in ("2nd-try", "v1.3-sft", "a" * 50):
        with pytest.raises(ApiException) as err:
            create(crds, kube_namespace, "sftjobs", "SFTJob", name, job_spec())
        assert err.value.status == 422 and "metadata.name" in err.value.body
    with pytest.raises(ApiException) as err:
        create(crds, kube_namespace, "longvideodatasets", "LongVideoDataset", "d" * 64,
               {"source": {"jsonl": "/x.jsonl"}})
    assert err.value.status == 422


def test_colliding_refused_and_nan_reporting_jobs_each_say_why(op, crds, kube_namespace, k8s_client, tmp_path):
    ns, api, core = kube_namespace, crds, client.CoreV1Api(k8s_client)
    dataset(api, ns, tmp_path)
    # an SFTJob and an RLJob of one name: their children never collide, both succeed
    create(api, ns, "sftjobs", "SFTJob", "same", job_spec())
    create(api, ns, "rljobs", "RLJob", "same", job_spec(args=["--nan-loss"], rollout={"engine": "transformers"}))
    # a ServiceAccount that happens to hold a child's name is not adopted
    core.create_namespaced_service_account(ns, {"metadata": {"name": "clash-sft-trainer"}})
    create(api, ns, "sftjobs", "SFTJob", "clash", job_spec())
    # a pod the API server refuses (no such PriorityClass): said in the status, no pod left waiting
    create(api, ns, "sftjobs", "SFTJob", "prio", job_spec(placement={"priorityClassName": "no-such-class"}))
    conflict = _condition(api, ns, "sftjobs", "clash", "Created", "ChildConflict")
    assert "ServiceAccount 'clash-sft-trainer' already exists and has no controller" in conflict["message"]
    refused = _condition(api, ns, "sftjobs", "prio", "Created", "CreateRefused")
    assert "Pod 'prio-sft-worker-0'" in refused["message"] and "no-such-class" in refused["message"]
    assert not core.list_namespaced_pod(ns, label_selector="longvideo.dev/owner=prio").items
    assert wait_phase(api, ns, "sftjobs", "same", "Succeeded", 60)["progress"]["summary"] == "3/3"
    rl = wait_phase(api, ns, "rljobs", "same", "Succeeded", 60)
    assert rl["progress"]["droppedValues"] == 1 and "loss" not in rl["progress"]
    for plural, name in (("sftjobs", "same"), ("rljobs", "same"), ("sftjobs", "clash"), ("sftjobs", "prio")):
        _deleted_quickly(api, ns, plural, name)
    assert core.read_namespaced_service_account("clash-sft-trainer", ns)      # not ours: left alone
