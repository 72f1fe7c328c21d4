"""The operator suites import their builders from op_helpers.py / op_cluster.py beside this file
(import-mode=importlib puts no test folder on sys.path; this folder must not become a package named
`operator`). Cluster fixtures: `crds` (CRDs installed, a CustomObjectsApi) and `op` (the operator running
under KopfRunner in the test's namespace)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="module")
def crds(k8s_client):
    import yaml
    from kubernetes import client
    from kubernetes.client.rest import ApiException
    from lvr_localcluster.pytest_plugin import wait_until
    from op_cluster import CRDS

    ext = client.ApiextensionsV1Api(k8s_client)
    for path in sorted(CRDS.glob("longvideo.dev_*.yaml")):
        body = yaml.safe_load(path.read_text())
        try:
            ext.create_custom_resource_definition(body)
        except ApiException as err:
            if err.status != 409:
                raise
        wait_until(lambda: any(c.type == "Established" and c.status == "True" for c in
                               ext.read_custom_resource_definition(body["metadata"]["name"]).status.conditions or []),
                   30, f"{path.name} Established")
    return client.CustomObjectsApi(k8s_client)


@pytest.fixture
def op(kopf_operator, kube_cluster, kube_namespace, crds, monkeypatch):
    from kubernetes.config import kube_config

    # the client read KUBECONFIG when it was imported, before the cluster fixture set it
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kube_cluster.kubeconfig))
    monkeypatch.setenv("LVR_RESYNC_SECONDS", "2")
    with kopf_operator("lvr_operator.main", namespace=kube_namespace, timeout=120) as runner:
        yield runner
