"""The operator on the local cluster: activeDeadlineSeconds; and the examples under examples/k8s apply
cleanly (kubectl apply, server-side schema validation, nothing pruned)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from op_cluster import G, V, create, job_spec, owned_pods, ready_dataset, wait_phase

from lvr_localcluster.pytest_plugin import wait_until
from lvr_operator.api.kinds import kind_by_name

pytestmark = pytest.mark.cluster
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "k8s"


def test_active_deadline_fails_the_job_and_deletes_its_pods(op, crds, kube_namespace, k8s_client, tmp_path):
    ns, api, core = kube_namespace, crds, client.CoreV1Api(k8s_client)
    ready_dataset(api, ns, tmp_path)
    create(api, ns, "sftjobs", "SFTJob", "slow", job_spec(
        args=["--steps", "1000", "--sleep", "0.5"], resources={"nodes": 2, "gpusPerNode": 0},
        runPolicy={"activeDeadlineSeconds": 4, "backoffLimit": 3}))
    wait_phase(api, ns, "sftjobs", "slow", "Running", 60)
    failed = wait_phase(api, ns, "sftjobs", "slow", "Failed", 30)
    cond = next(c for c in failed["conditions"] if c["type"] == "Failed")
    assert cond["status"] == "True" and cond["reason"] == "DeadlineExceeded"
    assert "activeDeadlineSeconds=4" in failed["message"] and not failed.get("restarts")
    wait_until(lambda: not owned_pods(core, ns, "slow"), 60, "pods of a job past its deadline deleted")
    events = core.list_namespaced_event(ns, field_selector="involvedObject.name=slow").items
    # GangCreated: posted although the first pod create is refused (500) until the new ServiceAccount has a token
    assert {"GangCreated", "AllWorkersRunning", "DeadlineExceeded"} <= {e.reason for e in events}


def _kubectl_apply(kubeconfig: Path, ns: str) -> str:
    out = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), "-n", ns, "apply", "-f", str(EXAMPLES)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _strip(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def test_examples_apply_cleanly_and_nothing_is_pruned(crds, kube_cluster, kube_namespace):
    """Every example is accepted by the CRD schemas as written: no rejected and no silently pruned field."""
    docs = [d for p in sorted(EXAMPLES.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    assert {d["kind"] for d in docs} == {"LongVideoDataset", "SFTJob", "RLJob"}
    if shutil.which("kubectl"):
        out = _kubectl_apply(kube_cluster.kubeconfig, kube_namespace)
        assert out.count("created") == len(docs), out
    else:                                   # the Python client, same server-side validation
        for d in docs:
            crds.create_namespaced_custom_object(G, V, kube_namespace, kind_by_name(d["kind"]).plural, d)
    for d in docs:
        stored = crds.get_namespaced_custom_object(G, V, kube_namespace, kind_by_name(d["kind"]).plural,
                                                   d["metadata"]["name"])
        assert _strip(stored) == _strip(d), f"{d['kind']} {d['metadata']['name']}: the apiserver changed the spec"


def test_stand_in_reports_termination_messages(kube_namespace, k8s_client):
    """The kubelet stand-in gives each container its own terminationMessagePath file and reports what was
    written there (or, for FallbackToLogsOnError and a failure, the log's tail): the dataset counts use it."""
    core = client.CoreV1Api(k8s_client)
    sh = ["sh", "-c"]
    containers = [
        {"name": "report", "image": "busybox", "command": [*sh, "printf '{\"rows\": 2}' > /dev/termination-log"]},
        {"name": "custom", "image": "busybox", "terminationMessagePath": "/var/run/msg",
         "command": [*sh, "printf done > /var/run/msg"]},
        {"name": "crash", "image": "busybox", "terminationMessagePolicy": "FallbackToLogsOnError",
         "command": [*sh, "echo loading; echo boom; exit 3"]}]
    core.create_namespaced_pod(kube_namespace, {"metadata": {"name": "msgs"},
                                                "spec": {"restartPolicy": "Never", "containers": containers}})
    pod = wait_until(lambda: (p := core.read_namespaced_pod("msgs", kube_namespace)).status.phase == "Failed" and p,
                     60, "pod msgs Failed")
    ends = {c.name: c.state.terminated for c in pod.status.container_statuses}
    assert ends["report"].message == '{"rows": 2}' and ends["custom"].message == "done"
    assert ends["crash"].exit_code == 3 and ends["crash"].message.splitlines()[-2:] == ["loading", "boom"]


def test_two_jobs_that_each_need_the_whole_node_never_both_get_pods(op, crds, kube_namespace, k8s_client, tmp_path):
    """Fair gang admission: both jobs created at once, each a gang of 2 pods x 8 GPUs, i.e. both GPU nodes.
    The operator counts free GPUs and creates a gang under one lock, so only one job holds pods at any
    moment (never half of each, which would deadlock both); the other waits Pending, saying which job holds
    the GPUs (every message it shows names the holder; what the holder has alive changes as its pods finish),
    and runs when they are free."""
    import time

    ns, api, core = kube_namespace, crds, client.CoreV1Api(k8s_client)
    ready_dataset(api, ns, tmp_path)
    for name in ("first", "second"):
        create(api, ns, "sftjobs", "SFTJob", name, job_spec(args=["--steps", "6", "--sleep", "0.5"],
                                                            resources={"nodes": 2, "gpusPerNode": 8}))
    waiting, most, done = [], 0, set()
    deadline = time.monotonic() + 150
    while len(done) < 2 and time.monotonic() < deadline:
        holders = {p.metadata.labels["longvideo.dev/owner"] for p in core.list_namespaced_pod(ns).items
                   if p.metadata.labels.get("longvideo.dev/role") == "worker"
                   and p.status.phase in ("Pending", "Running")}
        most = max(most, len(holders))
        for name in ("first", "second"):
            status = api.get_namespaced_custom_object(G, V, ns, "sftjobs", name).get("status") or {}
            if status.get("phase") == "Pending" and "does not fit" in (status.get("message") or ""):
                waiting.append((name, status["message"]))
            if status.get("phase") == "Succeeded":
                done.add(name)
        time.sleep(0.2)
    assert done == {"first", "second"}, done
    assert most == 1, f"{most} jobs held worker pods at once"
    assert waiting, "the job that waited never said why"
    for name, message in waiting:
        holder = ({"first", "second"} - {name}).pop()
        assert f"GPUs held by SFTJob {ns}/{holder} (" in message, message
    assert any("(2 pods, 16 GPUs)" in message for _, message in waiting), waiting[-3:]
