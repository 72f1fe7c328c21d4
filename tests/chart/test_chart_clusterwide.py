"""The chart's default scope on the local cluster: one ClusterRole, every namespace watched, cluster-wide
kopf peering. RBAC both ways with the chart's ServiceAccount (MinIO off: the local cluster has its own S3)."""

from __future__ import annotations

import contextlib
import uuid

import pytest
from chart_helpers import call_status, exists, helm_release, helm_run, ready_operator_pod
from kubernetes import client, config

from lvr_localcluster.kubeapi import ApiError
from lvr_localcluster.ports import free_port
from lvr_localcluster.pytest_plugin import wait_until
from lvr_operator.manifests.rbac import operator_rules

pytestmark = pytest.mark.cluster
OPERATOR = "lvr-longvideo-rl-operator"


@pytest.fixture(scope="module")
def release(helm, kube_cluster):
    """The default install (minus MinIO) in a fresh namespace; uninstalled by the last test or at the end."""
    ns = kube_cluster.create_namespace(f"lvr-cw-{uuid.uuid4().hex[:5]}")
    kubeconfig = str(kube_cluster.kubeconfig)
    helm_release(helm, kubeconfig, "install", "lvr", ns,
                 {"minio": {"enabled": False}, "operator": {"healthPort": free_port(), "metricsPort": free_port()}})
    yield ns, kubeconfig
    helm_run(helm, "uninstall", "lvr", "-n", ns, "--kubeconfig", kubeconfig, "--wait", check=False)
    with contextlib.suppress(ApiError):
        kube_cluster.api.delete(f"/api/v1/namespaces/{ns}")


def test_cluster_wide_install_and_rbac_both_ways(helm, kube_cluster, kube_api, kube_namespace, release):
    ns, kubeconfig = release
    pod = wait_until(lambda: ready_operator_pod(kube_api, ns, OPERATOR), 90, "operator Deployment Available")
    assert not [a for a in pod["spec"]["containers"][0]["args"] if a.startswith("--namespace")]
    assert kube_api.get("/apis/kopf.dev/v1/clusterkopfpeerings/longvideo-rl")
    role = kube_api.get(f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{ns}-{OPERATOR}")
    assert role["rules"] == operator_rules()

    path = kube_cluster.service_account_kubeconfig(ns, OPERATOR)
    with config.new_client_from_config(config_file=str(path)) as api:
        core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
        custom, ext = client.CustomObjectsApi(api), client.ApiextensionsV1Api(api)
        dry = {"dry_run": "All"}
        pod_body = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "python"}]}}
        # any namespace: its custom resources, pods and children
        assert call_status(custom.list_cluster_custom_object, "longvideo.dev", "v1alpha1", "rljobs") == 200
        assert call_status(core.create_namespaced_pod, kube_namespace, pod_body, **dry) == 200
        assert call_status(core.create_namespaced_config_map, kube_namespace, {"metadata": {"name": "c"}}, **dry) == 200
        assert call_status(core.list_node) == 200
        # never: Secrets, cluster-scoped RBAC, CRDs, namespaces
        assert call_status(core.list_secret_for_all_namespaces) == 403
        assert call_status(core.read_namespaced_secret, "lvr-s3", "default") == 403
        assert call_status(rbac.create_cluster_role, {"metadata": {"name": "x"}, "rules": []}, **dry) == 403
        assert call_status(rbac.create_cluster_role_binding, {
            "metadata": {"name": "x"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                                   "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": OPERATOR, "namespace": ns}]}, **dry) == 403
        assert call_status(ext.list_custom_resource_definition) == 403
        assert call_status(core.list_namespace) == 403
        assert call_status(core.create_namespace, {"metadata": {"name": "lvr-evil"}}, **dry) == 403

    helm_release(helm, kubeconfig, "uninstall", "lvr", ns)
    for gone in ("/apis/kopf.dev/v1/clusterkopfpeerings/longvideo-rl",
                 f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{ns}-{OPERATOR}",
                 f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{ns}-{OPERATOR}"):
        assert not exists(kube_api, gone), gone
