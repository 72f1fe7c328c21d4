"""The chart on the local cluster with the real helm, scoped to one watched namespace (MinIO off: the
local cluster brings its own S3): install, RBAC both ways with the chart's own ServiceAccount, kopf
peering, upgrade, uninstall. The trainer pods' own account is checked here too.

The local kubelet stand-in runs the operator container's command (`lvr operator run ...`) with the venv's
`lvr`; it ignores probes and securityContext (render tests cover those)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import urllib.request
import uuid

import pytest
from chart_helpers import call_status, exists, helm_release, helm_run, ready_operator_pod
from kubernetes import client, config

from lvr_localcluster.kubeapi import ApiError
from lvr_localcluster.ports import free_port
from lvr_localcluster.pytest_plugin import wait_until
from lvr_operator.manifests.job import trainer_rbac
from lvr_operator.manifests.common import trainer_account_name, worker_name

pytestmark = pytest.mark.cluster
RELEASE = "lvr"
OPERATOR = "lvr-longvideo-rl-operator"
G, V = "longvideo.dev", "v1alpha1"
PLURALS = ("longvideodatasets", "sftjobs", "rljobs")


@pytest.fixture(scope="module")
def spaces(kube_cluster):
    """(release namespace, watched namespace, a namespace the operator must not touch)."""
    tag = uuid.uuid4().hex[:5]
    names = [kube_cluster.create_namespace(f"{n}-{tag}") for n in ("lvr-system", "lvr-watched", "lvr-other")]
    yield names
    for name in names:
        with contextlib.suppress(ApiError):
            kube_cluster.api.delete(f"/api/v1/namespaces/{name}")


@pytest.fixture(scope="module")
def install(helm, kube_cluster, spaces):
    """Installs the release once for the module (uninstalled at the end if a test did not)."""
    release_ns, watched, _ = spaces
    values = {"watchNamespaces": [watched], "minio": {"enabled": False},
              "operator": {"healthPort": free_port(), "metricsPort": free_port(), "resyncSeconds": 2}}
    kubeconfig = str(kube_cluster.kubeconfig)
    out = helm_release(helm, kubeconfig, "install", RELEASE, release_ns, values)
    yield {"values": values, "notes": out, "kubeconfig": kubeconfig}
    helm_run(helm, "uninstall", RELEASE, "--namespace", release_ns, "--kubeconfig", kubeconfig, "--wait",
             check=False)


@pytest.fixture(scope="module")
def operator_api(kube_cluster, spaces, install):
    """A kubernetes client acting as the chart's ServiceAccount (a TokenRequest token; RBAC applies)."""
    path = kube_cluster.service_account_kubeconfig(spaces[0], OPERATOR)
    api = config.new_client_from_config(config_file=str(path))
    yield api
    api.close()


def _can(api, verb: str, resource: str, namespace: str | None, group: str = "", subresource: str = "") -> bool:
    """SelfSubjectAccessReview: what the apiserver's RBAC authorizer answers for this identity."""
    attrs = client.V1ResourceAttributes(verb=verb, resource=resource, namespace=namespace, group=group,
                                        subresource=subresource or None)
    review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=attrs))
    return client.AuthorizationV1Api(api).create_self_subject_access_review(review).status.allowed


def _pod(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "python",
                                                               "command": ["sleep", "600"]}]}}


def test_install_brings_the_operator_up(kube_api, spaces, install):
    release_ns, watched, _ = spaces
    pod = wait_until(lambda: ready_operator_pod(kube_api, release_ns, OPERATOR), 90, "operator Deployment Available")
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["lvr", "operator", "run"]
    assert f"--namespace={watched}" in container["args"] and "--peering=longvideo-rl" in container["args"]
    assert kube_api.get(f"/apis/kopf.dev/v1/namespaces/{watched}/kopfpeerings/longvideo-rl")
    assert f"It watches the namespaces: {watched}" in install["notes"]
    for plural in PLURALS:
        assert kube_api.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{plural}.{G}")
    # its Prometheus metrics, scraped where the chart's port says (the local cluster's pods share the host's ports)
    port = install["values"]["operator"]["metricsPort"]

    def scrape() -> str | None:            # the pod reads Ready before its process has started listening
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except OSError:
            return None
    text = wait_until(scrape, 60, "the operator's /metrics")
    assert "# TYPE lvr_operator_reconcile_seconds histogram" in text and "lvr_operator_api_errors_total" in text


def test_operator_account_may_do_its_work(operator_api, spaces):
    _, watched, other = spaces
    custom, core = client.CustomObjectsApi(operator_api), client.CoreV1Api(operator_api)
    rbac = client.RbacAuthorizationV1Api(operator_api)
    for plural in PLURALS:
        custom.list_namespaced_custom_object(G, V, watched, plural)
        for verb in ("get", "watch", "patch", "delete"):
            assert _can(operator_api, verb, plural, watched, G), f"{verb} {plural}"
        assert _can(operator_api, "patch", plural, watched, G, "status"), f"patch {plural}/status"
    dry = {"dry_run": "All"}
    assert call_status(core.create_namespaced_pod, watched, _pod("p"), **dry) == 200
    assert call_status(core.create_namespaced_service, watched, {"metadata": {"name": "s"}, "spec": {
        "clusterIP": "None", "ports": [{"port": 29500}]}}, **dry) == 200
    assert call_status(core.create_namespaced_config_map, watched, {"metadata": {"name": "c"}}, **dry) == 200
    assert call_status(core.create_namespaced_service_account, watched, {"metadata": {"name": "a"}}, **dry) == 200
    # The per-job trainer Role grants get/patch on pods: allowed because the operator holds them itself.
    role = {"metadata": {"name": "r"}, "rules": [{"apiGroups": [""], "resources": ["pods"],
                                                  "resourceNames": ["x-worker-0"], "verbs": ["get", "patch"]}]}
    assert call_status(rbac.create_namespaced_role, watched, role) == 200      # for real: the binding needs it
    binding = {"metadata": {"name": "b"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                                      "name": "r"},
               "subjects": [{"kind": "ServiceAccount", "name": "a", "namespace": watched}]}
    assert call_status(rbac.create_namespaced_role_binding, watched, binding, **dry) == 200
    assert call_status(rbac.list_namespaced_role, watched) == 200
    assert call_status(rbac.delete_namespaced_role, "r", watched) == 200
    assert _can(operator_api, "create", "events", watched) and _can(operator_api, "get", "pods", watched, "", "log")
    core.list_node()                                       # GPU accounting: every node and every active pod
    core.list_pod_for_all_namespaces(field_selector="status.phase!=Succeeded,status.phase!=Failed")


def test_operator_account_is_refused_the_rest(operator_api, spaces):
    release_ns, watched, other = spaces
    core, rbac = client.CoreV1Api(operator_api), client.RbacAuthorizationV1Api(operator_api)
    dry = {"dry_run": "All"}
    for ns in (watched, release_ns, other):
        assert call_status(core.list_namespaced_secret, ns) == 403
        assert call_status(core.read_namespaced_secret, "anything", ns) == 403
    assert call_status(core.list_secret_for_all_namespaces) == 403
    assert call_status(rbac.create_cluster_role, {"metadata": {"name": "lvr-evil"}, "rules": []}, **dry) == 403
    assert call_status(rbac.create_cluster_role_binding, {
        "metadata": {"name": "lvr-evil"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                                      "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": OPERATOR, "namespace": release_ns}]}, **dry) == 403
    # Outside the watched namespace: no pods, children or custom resources (listing pods stays, read-only).
    assert call_status(core.create_namespaced_pod, other, _pod("p"), **dry) == 403
    assert call_status(core.create_namespaced_config_map, other, {"metadata": {"name": "c"}}, **dry) == 403
    for verb in ("get", "create", "patch", "delete", "watch"):
        assert not _can(operator_api, verb, "pods", other), f"{verb} pods in {other}"
    custom = client.CustomObjectsApi(operator_api)
    assert call_status(custom.list_namespaced_custom_object, G, V, other, "sftjobs") == 403
    # RBAC's escalation check: it cannot hand out what it does not hold (here: reading Secrets).
    grab = {"metadata": {"name": "grab"}, "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}
    assert call_status(rbac.create_namespaced_role, watched, grab, **dry) == 403
    assert not _can(operator_api, "create", "customresourcedefinitions", None, "apiextensions.k8s.io")


def test_trainer_account_may_patch_only_its_own_pod(kube_cluster, kube_namespace):
    """manifests/job.py `trainer_rbac`: rank 0 patches its progress annotation onto its own pod, nothing else."""
    ns, api = kube_namespace, kube_cluster.api
    job = {"apiVersion": f"{G}/{V}", "kind": "SFTJob", "metadata": {"name": "j", "namespace": ns, "uid": "u"}}
    for obj in trainer_rbac(job, nodes=1):
        obj["metadata"].pop("ownerReferences")              # no real owner here: the GC would delete them
        path = {"ServiceAccount": f"/api/v1/namespaces/{ns}/serviceaccounts",
                "Role": f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
                "RoleBinding": f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings"}[obj["kind"]]
        api.create(path, obj)
    own, other = worker_name("SFTJob", "j", 0), "someone-else"
    for name in (own, other):
        api.create(f"/api/v1/namespaces/{ns}/pods", _pod(name))
    path = kube_cluster.service_account_kubeconfig(ns, trainer_account_name("SFTJob", "j"))
    with config.new_client_from_config(config_file=str(path)) as trainer:
        core = client.CoreV1Api(trainer)
        patch = {"metadata": {"annotations": {"longvideo.dev/progress": '{"step": 1}'}}}
        assert call_status(core.patch_namespaced_pod, own, ns, patch) == 200
        assert call_status(core.read_namespaced_pod, own, ns) == 200
        assert call_status(core.patch_namespaced_pod, other, ns, patch) == 403
        assert call_status(core.read_namespaced_pod, other, ns) == 403
        assert call_status(core.list_namespaced_pod, ns) == 403
        assert call_status(core.delete_namespaced_pod, own, ns) == 403
    assert api.get(f"/api/v1/namespaces/{ns}/pods/{own}")["metadata"]["annotations"]["longvideo.dev/progress"]


def test_a_second_operator_makes_both_pause(kube_cluster, kube_api, spaces, install, tmp_path):
    """Two copies never both act: a second `lvr operator run` in the same peering (same identity, same
    namespace) makes both pause; when it leaves, the chart's operator resumes and serves."""
    release_ns, watched, _ = spaces
    pod = wait_until(lambda: ready_operator_pod(kube_api, release_ns, OPERATOR), 60, "operator ready")
    log = lambda: kube_cluster.pod_log(release_ns, pod["metadata"]["name"], "operator")  # noqa: E731
    paused_before = log().count("Pausing all operators")
    env = {**os.environ, "KUBECONFIG": str(kube_cluster.service_account_kubeconfig(release_ns, OPERATOR))}
    argv = [os.path.join(os.path.dirname(sys.executable), "lvr"), "operator", "run", "--namespace", watched,
            "--peering", "longvideo-rl", "--liveness", f"http://127.0.0.1:{free_port()}/healthz"]
    with open(tmp_path / "second.log", "w") as out:
        second = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: log().count("Pausing all operators") > paused_before, 60, "the chart's operator paused")
        dataset = {"apiVersion": f"{G}/{V}", "kind": "LongVideoDataset", "metadata": {"name": "paused"},
                   "spec": {"source": {"jsonl": str(tmp_path / "none.jsonl")}, "resources": {"gpusPerNode": 0}}}
        kube_api.create(f"/apis/{G}/{V}/namespaces/{watched}/longvideodatasets", dataset)
        with pytest.raises(TimeoutError):                  # nobody acts while both are paused
            wait_until(lambda: kube_api.get(f"/apis/{G}/{V}/namespaces/{watched}/longvideodatasets/paused")
                       .get("status"), 8, "a status written while paused")
    finally:
        second.send_signal(signal.SIGTERM)                 # a clean exit removes it from the peering
        second.wait(30)
    wait_until(lambda: kube_api.get(f"/apis/{G}/{V}/namespaces/{watched}/longvideodatasets/paused")
               .get("status", {}).get("phase"), 90, "the resumed operator reconciles the dataset")
    assert "Possibly conflicting operators" in (tmp_path / "second.log").read_text()
    kube_api.delete(f"/apis/{G}/{V}/namespaces/{watched}/longvideodatasets/paused")
    wait_until(lambda: not exists(kube_api, f"/apis/{G}/{V}/namespaces/{watched}/longvideodatasets/paused"),
               60, "dataset deleted (its finalizer removed by the operator)")


def test_upgrade_rolls_the_operator_only_when_values_change(helm, kube_api, spaces, install):
    release_ns = spaces[0]
    before = wait_until(lambda: ready_operator_pod(kube_api, release_ns, OPERATOR), 60, "operator ready")
    helm_release(helm, install["kubeconfig"], "upgrade", RELEASE, release_ns, install["values"])
    same = wait_until(lambda: ready_operator_pod(kube_api, release_ns, OPERATOR), 60, "operator ready")
    assert same["metadata"]["uid"] == before["metadata"]["uid"]        # same values: the pod is kept
    values = {**install["values"], "operator": {**install["values"]["operator"], "resyncSeconds": 5}}
    helm_release(helm, install["kubeconfig"], "upgrade", RELEASE, release_ns, values)
    after = wait_until(lambda: (p := ready_operator_pod(kube_api, release_ns, OPERATOR))
                       and p["metadata"]["uid"] != before["metadata"]["uid"] and p, 90, "a new operator pod")
    assert "--resync=5" in after["spec"]["containers"][0]["args"]
    hashes = {before["metadata"]["labels"]["pod-template-hash"], after["metadata"]["labels"]["pod-template-hash"]}
    assert len(hashes) == 2                                            # a new ReplicaSet
    wait_until(lambda: not exists(kube_api, f"/api/v1/namespaces/{release_ns}/pods/{before['metadata']['name']}"),
               60, "the old operator pod gone")
    history = helm_run(helm, "history", RELEASE, "-n", release_ns, "--kubeconfig", install["kubeconfig"]).stdout
    assert len(history.strip().splitlines()) == 4                     # header + 3 revisions


def test_uninstall_removes_the_release_and_keeps_the_crds(helm, kube_api, spaces, install):
    release_ns, watched, _ = spaces
    helm_release(helm, install["kubeconfig"], "uninstall", RELEASE, release_ns)
    for path in (f"/apis/apps/v1/namespaces/{release_ns}/deployments/{OPERATOR}",
                 f"/api/v1/namespaces/{release_ns}/serviceaccounts/{OPERATOR}",
                 f"/apis/rbac.authorization.k8s.io/v1/namespaces/{watched}/roles/{OPERATOR}",
                 f"/apis/rbac.authorization.k8s.io/v1/namespaces/{watched}/rolebindings/{OPERATOR}",
                 f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{release_ns}-{OPERATOR}",
                 f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{release_ns}-{OPERATOR}",
                 f"/apis/kopf.dev/v1/namespaces/{watched}/kopfpeerings/longvideo-rl"):
        assert not exists(kube_api, path), path
    wait_until(lambda: not kube_api.get(f"/api/v1/namespaces/{release_ns}/pods")["items"], 60, "operator pod gone")
    assert exists(kube_api, f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/sftjobs.{G}")
    proc = helm_run(helm, "status", RELEASE, "-n", release_ns, "--kubeconfig", install["kubeconfig"], check=False)
    assert proc.returncode != 0 and "not found" in proc.stderr


def test_kubectl_apply_of_crds_dir_works_on_a_cluster(kube_cluster):
    """`kubectl apply -f crds/` (what a user without Helm runs) applies every file: no object in it
    needs a namespace that a fresh cluster lacks (the old crds/rbac.yaml did)."""
    from pathlib import Path

    kubectl = Path(subprocess.run(["bash", "hack/install-helm.sh"], check=True, text=True, stdout=subprocess.PIPE,
                                  cwd=Path(__file__).resolve().parents[2]).stdout.strip()) / "kubectl"
    crds = Path(__file__).resolve().parents[2] / "crds"
    proc = subprocess.run([str(kubectl), "--kubeconfig", str(kube_cluster.kubeconfig), "apply", "-f", str(crds),
                           "--dry-run=server"], text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.returncode == 0, proc.stdout
    applied = [line for line in proc.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(applied) == len(list(crds.glob("*.yaml"))), proc.stdout
