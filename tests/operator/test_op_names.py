"""Names: a custom resource whose name cannot make valid children is refused (CRD schema) and marked
InvalidSpec (operator), children of different kinds never share a name, deletion never hangs."""

from __future__ import annotations

import random
import re

import kopf
import pytest
from kubernetes.client.rest import ApiException

from lvr_operator import handlers, service
from lvr_operator.api.kinds import KINDS
from lvr_operator.crdgen import crd
from lvr_operator.manifests.common import (config_name, max_name_length, name_problem, pod_group_name, service_name,
                                           trainer_account_name, worker_name)
from lvr_operator.reconcile.dataset import DatasetObserved, reconcile_dataset
from op_helpers import NOW, SETTINGS, dataset, job, observed, run

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _children(kind: str, name: str) -> set[str]:
    return {worker_name(kind, name, r) for r in range(64)} | {
        service_name(kind, name), config_name(kind, name), trainer_account_name(kind, name), pod_group_name(kind, name)}


@pytest.mark.parametrize("name", ["2nd-try", "v1.3-sft"])
def test_a_job_name_that_cannot_name_its_service_is_invalid_naming_the_child(name):
    plan = run(job(name=name), observed())
    assert plan.actions == [] and plan.status["phase"] == "Failed"
    c = next(c for c in plan.status["conditions"] if c["type"] == "InvalidSpec")
    assert c["status"] == "True" and f"headless Service '{name}-rl-workers'" in c["message"]
    assert "DNS-1035" in c["message"] and plan.invalid


def test_a_job_name_too_long_for_its_pod_host_names_is_invalid_with_the_limit():
    limit = max_name_length("SFTJob")
    plan = run(job("SFTJob", name="a" * (limit + 1)), observed())
    assert plan.actions == [] and plan.status["phase"] == "Failed"
    msg = plan.status["message"]
    assert f"may have at most {limit}" in msg and "worker pod host name" in msg and "at most 63" in msg
    assert run(job("SFTJob", name="a" * limit), observed()).status["phase"] != "Failed"


def test_every_child_of_a_longest_valid_name_is_a_dns_label():
    for kind in ("SFTJob", "RLJob"):
        name = "a" * max_name_length(kind)
        assert name_problem(kind, name) is None
        assert all(len(c) <= 63 and DNS_LABEL.match(c) for c in _children(kind, name))


def test_a_dataset_name_longer_than_a_label_value_is_invalid_and_nothing_is_created():
    obj = dataset(phase=None, name="d" * 64)
    plan = reconcile_dataset(obj, DatasetObserved(NOW), SETTINGS)
    assert plan.actions == [] and plan.status["phase"] == "Failed" and plan.invalid
    assert "label longvideo.dev/owner" in plan.status["message"] and "at most 63" in plan.status["message"]


def test_the_crds_refuse_the_names_the_operator_refuses():
    for kind in KINDS:
        schema = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["metadata"]
        name = schema["properties"]["name"]
        assert name["maxLength"] == max_name_length(kind.kind)
        for candidate in ("2nd-try", "v1.3-sft", "ok", "a" * name["maxLength"]):
            schema_ok = re.search(name.get("pattern", ".*"), candidate) is not None
            assert schema_ok == (name_problem(kind.kind, candidate) is None), (kind.kind, candidate)


def test_an_sftjob_and_an_rljob_never_share_a_child_name():
    assert not _children("SFTJob", "x") & _children("RLJob", "x")
    rng = random.Random(0)
    words = ["a", "rl", "sft", "x", "worker", "workers", "1", "gang", "config", "trainer"]
    names = {"-".join(rng.choice(words) for _ in range(rng.randint(1, 4))) for _ in range(400)}
    names = {n for n in names if n[0].isalpha()}
    sft = set().union(*(_children("SFTJob", n) for n in names))
    rl = set().union(*(_children("RLJob", n) for n in names))
    assert not sft & rl


class _Listing:
    """A Cluster whose reads fail the way the API server fails a list by an invalid label value."""

    def __init__(self, error: Exception | None = None):
        self.error, self.listed, self.patched = error, 0, []

    def get_cr(self, kind, namespace, name):
        return job(kind, name=name) if kind != "LongVideoDataset" else dataset(phase=None, name=name)

    def pods(self, owner):
        self.listed += 1
        if self.error:
            raise self.error
        return []

    def delete_children(self, owner):
        self.pods(owner)
        return 0

    def apply(self, owner, plan):
        self.patched.append(plan.status)


def test_an_invalid_name_gets_a_status_without_listing_by_label():
    cluster = _Listing(ApiException(status=400, reason="invalid label value"))
    plan = service.reconcile_object(cluster, "LongVideoDataset", "ns", "d" * 70, SETTINGS, now=NOW)
    assert cluster.listed == 0 and plan.invalid and cluster.patched[0]["phase"] == "Failed"
    plan = service.reconcile_object(cluster, "SFTJob", "ns", "2nd-try", SETTINGS, now=NOW)
    assert cluster.listed == 0 and "DNS-1035" in plan.invalid


def test_deletion_never_waits_on_a_list_that_keeps_failing(monkeypatch):
    body = job("SFTJob", name="j")
    refused = _Listing(ApiException(status=400, reason="bad selector"))
    monkeypatch.setitem(handlers.CONFIG, "cluster", refused)
    handlers._delete_children("SFTJob", body, retry=0)            # a 4xx: given up at once, finalizer goes
    assert refused.listed == 1
    flaky = _Listing(ApiException(status=500, reason="etcd"))
    monkeypatch.setitem(handlers.CONFIG, "cluster", flaky)
    with pytest.raises(kopf.TemporaryError):
        handlers._delete_children("SFTJob", body, retry=0)        # a 5xx: retried ...
    handlers._delete_children("SFTJob", body, retry=handlers.DELETE_TRIES - 1)   # ... a few times only
    handlers._delete_children("LongVideoDataset", dataset(name="d" * 70), retry=0)
    assert flaky.listed == 2                                       # an invalid name: nothing to list

