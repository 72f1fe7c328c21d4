"""The real control plane: CRDs and schema validation, nodes and heartbeats, identities and RBAC."""

from __future__ import annotations

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from lvr_localcluster.nodes import CPU_NODE, GPU_NODE, GPU_NODE_2
from lvr_localcluster.pytest_plugin import wait_until

pytestmark = pytest.mark.cluster

CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "clips.test.lvr.dev"},
    "spec": {"group": "test.lvr.dev", "scope": "Namespaced",
             "names": {"plural": "clips", "singular": "clip", "kind": "Clip"},
             "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                           "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                               "spec": {"type": "object", "required": ["frames"], "properties": {
                                   "frames": {"type": "integer", "minimum": 1, "maximum": 4096}}},
                               "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}]},
}


def test_crd_established_and_schema_rejects_invalid(k8s_client, kube_namespace):
    ext = client.ApiextensionsV1Api(k8s_client)
    ext.create_custom_resource_definition(CRD)

    def established():
        conds = ext.read_custom_resource_definition(CRD["metadata"]["name"]).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conds)
    wait_until(established, 30, "CRD Established")

    objects = client.CustomObjectsApi(k8s_client)
    clip = {"apiVersion": "test.lvr.dev/v1", "kind": "Clip", "metadata": {"name": "ok"}, "spec": {"frames": 64}}
    wait_until(lambda: _try_create(objects, kube_namespace, clip), 30, "custom object accepted")
    bad = {**clip, "metadata": {"name": "bad"}, "spec": {"frames": 0}}
    with pytest.raises(ApiException) as err:
        objects.create_namespaced_custom_object("test.lvr.dev", "v1", kube_namespace, "clips", bad)
    assert err.value.status == 422
    assert "spec.frames" in err.value.body
    ext.delete_custom_resource_definition(CRD["metadata"]["name"])


def _try_create(objects, namespace, body) -> bool:
    """The first create right after Established can still 404 while discovery catches up."""
    try:
        objects.create_namespaced_custom_object("test.lvr.dev", "v1", namespace, "clips", body)
        return True
    except ApiException as err:
        if err.status != 404:
            raise
        return False


def test_nodes_shaped_and_heartbeating(k8s_client, kube_cluster):
    core = client.CoreV1Api(k8s_client)
    gpu = core.read_node(GPU_NODE)
    assert gpu.status.allocatable["nvidia.com/gpu"] == "8"
    assert gpu.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"
    assert [(t.key, t.value, t.effect) for t in gpu.spec.taints] == [("nvidia.com/gpu", "present", "NoSchedule")]
    second = core.read_node(GPU_NODE_2)
    assert second.status.allocatable["nvidia.com/gpu"] == "8" and second.spec.taints == gpu.spec.taints
    cpu = core.read_node(CPU_NODE)
    assert "nvidia.com/gpu" not in cpu.status.allocatable and not cpu.spec.taints
    for node in (gpu, cpu):
        assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"
    lease = client.CoordinationV1Api(k8s_client).read_namespaced_lease(GPU_NODE, "kube-node-lease")
    assert lease.spec.holder_identity == GPU_NODE and lease.spec.renew_time is not None
    assert kube_cluster.heartbeat.errors == 0


def test_service_account_identity_follows_rbac(kube_cluster, kube_namespace):
    kubeconfig = kube_cluster.service_account_kubeconfig(kube_namespace, "reader")
    as_reader = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
    with pytest.raises(ApiException) as err:
        as_reader.list_namespaced_pod(kube_namespace)
    assert err.value.status == 403
    rbac = "/apis/rbac.authorization.k8s.io/v1/namespaces/" + kube_namespace
    kube_cluster.api.create(f"{rbac}/roles", {"metadata": {"name": "pod-reader"}, "rules": [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]})
    kube_cluster.api.create(f"{rbac}/rolebindings", {
        "metadata": {"name": "reader"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                                    "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": kube_namespace}]})
    wait_until(lambda: _can_list(as_reader, kube_namespace), 10, "RBAC to grant list pods")


def _can_list(core, namespace) -> bool:
    try:
        core.list_namespaced_pod(namespace)
        return True
    except ApiException as err:
        if err.status != 403:
            raise
        return False
