"""The operator's Prometheus metrics: each reconcile counted by kind and outcome with its latency, resources
by phase (a deleted one leaves the gauge), errors of the API client counted by method and code, and the
/metrics endpoint serving the text format."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from kubernetes.client.rest import ApiException

from lvr_operator import metrics, service

from op_helpers import NOW, SETTINGS, job


def sample(name: str, **labels) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


class _Cluster:
    """Enough of Cluster for a reconcile of a resource whose name makes no children (nothing is listed)."""

    def __init__(self, obj):
        self.obj, self.fail = obj, None

    def get_cr(self, kind, namespace, name):
        if self.fail:
            raise self.fail
        return self.obj

    def apply(self, owner, plan):
        pass


def test_reconciles_are_counted_by_outcome_with_their_latency_and_resources_by_phase():
    bad_name = "2nd-metrics"                             # InvalidSpec: a name no child can carry
    cluster = _Cluster(job("SFTJob", name=bad_name))
    before = sample("lvr_operator_reconciles_total", kind="SFTJob", result="invalid")
    seconds = sample("lvr_operator_reconcile_seconds_count", kind="SFTJob")
    service.reconcile_object(cluster, "SFTJob", "ns", bad_name, SETTINGS, now=NOW)
    assert sample("lvr_operator_reconciles_total", kind="SFTJob", result="invalid") == before + 1
    assert sample("lvr_operator_reconcile_seconds_count", kind="SFTJob") == seconds + 1
    assert sample("lvr_operator_resources", kind="SFTJob", phase="Failed") >= 1
    failed = sample("lvr_operator_resources", kind="SFTJob", phase="Failed")
    cluster.obj = None                                   # deleted
    service.reconcile_object(cluster, "SFTJob", "ns", bad_name, SETTINGS, now=NOW)
    assert sample("lvr_operator_resources", kind="SFTJob", phase="Failed") == failed - 1
    cluster.fail = RuntimeError("API server down")
    errors = sample("lvr_operator_reconciles_total", kind="SFTJob", result="error")
    with pytest.raises(RuntimeError):
        service.reconcile_object(cluster, "SFTJob", "ns", bad_name, SETTINGS, now=NOW)
    assert sample("lvr_operator_reconciles_total", kind="SFTJob", result="error") == errors + 1


def test_api_errors_are_counted_by_method_and_code():
    class Client:
        def call_api(self, path, method, *args, **kwargs):
            raise ApiException(status=403, reason="Forbidden")

    client = Client()
    metrics.count_api_errors(client)
    before = sample("lvr_operator_api_errors_total", method="POST", code="403")
    with pytest.raises(ApiException):
        client.call_api("/api/v1/namespaces/ns/pods", "POST")
    assert sample("lvr_operator_api_errors_total", method="POST", code="403") == before + 1


def test_the_metrics_endpoint_serves_the_text_format():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics.serve(port)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert "# TYPE lvr_operator_reconcile_seconds histogram" in text
    assert "# TYPE lvr_operator_reconciles_total counter" in text
