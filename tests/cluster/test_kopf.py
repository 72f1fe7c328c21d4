"""The kopf_operator fixture: an operator under KopfRunner reconciles objects in the local cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client

from lvr_localcluster.pytest_plugin import wait_until

pytestmark = pytest.mark.cluster


def test_operator_under_kopf_runner_reconciles(kopf_operator, k8s_client, kube_namespace):
    core = client.CoreV1Api(k8s_client)
    with kopf_operator(str(Path(__file__).with_name("toy_operator.py")), namespace=kube_namespace):
        core.create_namespaced_config_map(kube_namespace, {"metadata": {"name": "cm", "labels": {"lvr-test": "kopf"}}})

        def seen():
            annotations = core.read_namespaced_config_map("cm", kube_namespace).metadata.annotations or {}
            return annotations.get("lvr.dev/seen-by")
        assert wait_until(seen, 30, "the toy operator's annotation") == "toy-operator"
