"""ownerReferences are honoured by the real controller-manager's garbage collector."""

from __future__ import annotations

import pytest
from kubernetes import client

from .helpers import pod_manifest, python, wait_gone, wait_phase

pytestmark = pytest.mark.cluster


def test_children_are_garbage_collected_with_their_owner(k8s_client, kube_namespace):
    core = client.CoreV1Api(k8s_client)
    owner = core.create_namespaced_config_map(kube_namespace, {"metadata": {"name": "owner"}})
    ref = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}]
    core.create_namespaced_config_map(kube_namespace, {"metadata": {"name": "child", "ownerReferences": ref}})
    pod = pod_manifest("child-pod", python("import time; time.sleep(600)"))
    pod["metadata"]["ownerReferences"] = ref
    core.create_namespaced_pod(kube_namespace, pod)
    wait_phase(core, kube_namespace, "child-pod", ("Running",))

    core.delete_namespaced_config_map("owner", kube_namespace)
    wait_gone(core.read_namespaced_config_map, "child", kube_namespace, what="child ConfigMap")
    wait_gone(core.read_namespaced_pod, "child-pod", kube_namespace, what="child Pod")
