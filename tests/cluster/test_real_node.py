"""The local cluster on real nodes (`LocalCluster(real_nodes=True)`, `make test-realnode`): kubelets of the
control plane's version on containerd, pods in containers from the images `hack/build-images.sh` builds,
kube-proxy forwarding the `kubernetes` Service. What a user's cluster does with a pod holds here: its own
address, the securityContext applied (and refused when the image cannot honour it), `kubectl logs` and
`kubectl exec`, in-cluster API access, cluster DNS for Services and headless pods, extended GPU resources
scheduled."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lvr_localcluster.cluster import LocalCluster
from lvr_localcluster.pytest_plugin import wait_until

pytestmark = [pytest.mark.realnode, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_IMAGE = "localhost/longvideo-rl/operator:dev"
NS = "realnode"
RESTRICTED = {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory):
    with LocalCluster(tmp_path_factory.mktemp("realnode"), real_nodes=True) as cluster:
        cluster.create_namespace(NS)
        # the default ServiceAccount may read pods: the in-cluster check below lists them
        cluster.api.create(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/rolebindings", {
            "metadata": {"name": "view"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": NS}]})
        yield cluster


@pytest.fixture(scope="module")
def helm_bin() -> Path:
    out = subprocess.run(["bash", str(ROOT / "hack" / "install-helm.sh")], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def kubectl(real_cluster, helm_bin):
    binary = str(helm_bin / "kubectl")

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run([binary, "--kubeconfig", str(real_cluster.kubeconfig), "-n", NS, *args],
                             capture_output=True, text=True, timeout=60)
        assert not check or res.returncode == 0, f"kubectl {' '.join(args)}: {res.stderr[-2000:]}"
        return res
    return run


def _pod(name: str, command: list[str], *, run_as: dict, node: str = "cpu-node-0", resources: dict | None = None,
         tolerate_gpu: bool = False) -> dict:
    container = {"name": "main", "image": OPERATOR_IMAGE, "imagePullPolicy": "Never", "command": command,
                 "securityContext": RESTRICTED}
    if resources:
        container["resources"] = resources
    spec = {"restartPolicy": "Never", "nodeSelector": {"kubernetes.io/hostname": node},
            "securityContext": run_as, "containers": [container]}
    if tolerate_gpu:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS}, "spec": spec}


def _status(cluster, name: str) -> dict:
    return cluster.api.get(f"/api/v1/namespaces/{NS}/pods/{name}").get("status", {})


def test_the_nodes_are_real_kubelets_on_containerd_with_gpus_advertised(real_cluster):
    nodes = {n["metadata"]["name"]: n for n in real_cluster.api.get("/api/v1/nodes")["items"]}
    assert set(nodes) == {"gpu-node-0", "gpu-node-1", "cpu-node-0"}
    for name, node in nodes.items():
        info = node["status"]["nodeInfo"]
        assert info["containerRuntimeVersion"].startswith("containerd://") and info["kubeletVersion"] == "v1.20.2"
        assert node["status"]["capacity"].get("nvidia.com/gpu") == ("8" if name.startswith("gpu") else None)


def test_a_pod_runs_in_a_container_as_its_security_context_says_with_logs_exec_and_the_api(real_cluster, kubectl):
    script = ("import os, socket, kubernetes as k; k.config.load_incluster_config(); "
              f"pods = k.client.CoreV1Api().list_namespaced_pod('{NS}').items; "
              "print('uid', os.getuid(), 'host', socket.gethostname(), 'pods', len(pods), flush=True); "
              "import time; time.sleep(600)")
    real_cluster.api.create(f"/api/v1/namespaces/{NS}/pods",
                            _pod("hello", ["python", "-c", script], run_as={"runAsUser": 65532, "runAsNonRoot": True}))
    wait_until(lambda: _status(real_cluster, "hello").get("phase") == "Running", 120, "pod hello Running")
    status = _status(real_cluster, "hello")
    assert status["podIP"].startswith("10.244.3.") and status["podIP"] != status["hostIP"]
    # through the `kubernetes` Service (kube-proxy) with the pod's own ServiceAccount token
    wait_until(lambda: "pods 1" in kubectl("logs", "hello").stdout, 60, "the pod's log line")
    assert "uid 65532 host hello" in kubectl("logs", "hello").stdout
    out = kubectl("exec", "hello", "--", "sh", "-c", "id -u; touch /probe || echo read-only", check=False)
    assert out.returncode == 0 and out.stdout.split() == ["65532", "read-only"], out.stdout + out.stderr


def test_cluster_dns_answers_for_services_and_for_the_pods_of_a_headless_service(real_cluster, kubectl):
    """What torchrun's rendezvous needs: <hostname>.<subdomain>.<ns>.svc resolves from another pod."""
    real_cluster.api.create(f"/api/v1/namespaces/{NS}/services", {
        "metadata": {"name": "peers"},
        "spec": {"clusterIP": "None", "selector": {"app": "peer"}, "ports": [{"name": "c10d", "port": 29500}]}})
    peer = _pod("peer-0", ["sleep", "600"], run_as={"runAsUser": 65532})
    peer["metadata"]["labels"] = {"app": "peer"}
    peer["spec"].update(hostname="peer-0", subdomain="peers")
    real_cluster.api.create(f"/api/v1/namespaces/{NS}/pods", peer)
    wait_until(lambda: _status(real_cluster, "peer-0").get("phase") == "Running", 120, "pod peer-0 Running")
    peer_ip = _status(real_cluster, "peer-0")["podIP"]
    fqdn = f"peer-0.peers.{NS}.svc.cluster.local"
    assert kubectl("exec", "peer-0", "--", "hostname", "-f").stdout.strip() == fqdn

    def resolve(name: str) -> str:
        out = kubectl("exec", "hello", "--", "python", "-c",
                      f"import socket; print(socket.gethostbyname('{name}'))", check=False)
        return out.stdout.strip() if out.returncode == 0 else ""
    wait_until(lambda: resolve(f"peer-0.peers.{NS}.svc") == peer_ip, 30, f"{fqdn} -> {peer_ip}")
    assert resolve("kubernetes.default") == "10.96.0.1"       # the search path of a ClusterFirst pod


def test_a_security_context_the_image_cannot_honour_fails_the_container(real_cluster):
    """runAsNonRoot without a user: the image's build stage runs as root, which the kubelet refuses."""
    pod = _pod("root-refused", ["true"], run_as={"runAsNonRoot": True, "runAsUser": 0})
    real_cluster.api.create(f"/api/v1/namespaces/{NS}/pods", pod)

    def refused() -> str:
        for c in _status(real_cluster, "root-refused").get("containerStatuses", []):
            waiting = c.get("state", {}).get("waiting", {})
            if waiting.get("reason") == "CreateContainerConfigError":
                return waiting.get("message", "")
        return ""
    wait_until(refused, 90, "CreateContainerConfigError")
    assert "non-root" in refused()


def test_a_pod_asking_for_gpus_is_scheduled_on_a_gpu_node(real_cluster):
    pod = _pod("gpus", ["sleep", "600"], run_as={"runAsUser": 65532}, node="gpu-node-1", tolerate_gpu=True,
               resources={"limits": {"nvidia.com/gpu": "2"}})
    real_cluster.api.create(f"/api/v1/namespaces/{NS}/pods", pod)
    wait_until(lambda: _status(real_cluster, "gpus").get("phase") == "Running", 120, "the GPU pod Running")
    pod = real_cluster.api.get(f"/api/v1/namespaces/{NS}/pods/gpus")
    assert pod["spec"]["nodeName"] == "gpu-node-1"
    assert pod["status"]["podIP"].startswith("10.244.2.")


def test_the_chart_runs_the_operator_from_its_image_and_it_reconciles(real_cluster, kubectl, helm_bin, tmp_path):
    """helm install puts the operator in a container of its Deployment's pod; from there it reaches the
    apiserver through the `kubernetes` Service and writes a status on the SFTJob it watches."""
    import yaml

    system, watched = real_cluster.create_namespace("lvr-system"), real_cluster.create_namespace("lvr-watched")
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({
        "watchNamespaces": [watched], "minio": {"enabled": False},
        "operator": {"image": {"repository": "localhost/longvideo-rl/operator", "tag": "dev", "pullPolicy": "Never"}}}))
    out = subprocess.run([str(helm_bin / "helm"), "install", "lvr", str(ROOT / "charts" / "longvideo-rl"),
                          "--namespace", system, "--kubeconfig", str(real_cluster.kubeconfig), "-f", str(values),
                          "--wait", "--timeout", "180s"], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    pods = real_cluster.api.get(f"/api/v1/namespaces/{system}/pods")["items"]
    (operator,) = [p for p in pods if p["metadata"]["name"].startswith("lvr-longvideo-rl-operator")]
    assert operator["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")
    job = yaml.safe_load((ROOT / "examples" / "local" / "sftjob.yaml").read_text())
    real_cluster.api.create(f"/apis/longvideo.dev/v1alpha1/namespaces/{watched}/sftjobs", job)

    def status() -> dict:
        return real_cluster.api.get(f"/apis/longvideo.dev/v1alpha1/namespaces/{watched}/sftjobs/sft-tiny").get(
            "status") or {}
    wait_until(lambda: "synth" in str(status().get("message", "")), 90, "the operator's status on the SFTJob")
    log = subprocess.run([str(helm_bin / "kubectl"), "--kubeconfig", str(real_cluster.kubeconfig), "-n", system,
                          "logs", operator["metadata"]["name"]], capture_output=True, text=True, timeout=60)
    assert log.returncode == 0 and "LongVideoDataset 'synth' not found" in log.stdout
