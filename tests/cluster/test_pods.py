"""Pods through the real scheduler onto the kubelet stand-in: placement, exit codes, deletion, config."""

from __future__ import annotations

import pytest
from kubernetes import client

from lvr_localcluster.nodes import GPU_NODE, GPU_NODE_2
from lvr_localcluster.pytest_plugin import wait_until

from .helpers import pid_alive, pod_manifest, python, wait_gone, wait_phase

pytestmark = pytest.mark.cluster


@pytest.fixture
def core(k8s_client) -> client.CoreV1Api:
    return client.CoreV1Api(k8s_client)


def test_gpu_pod_binds_to_gpu_node_and_succeeds(core, kube_cluster, kube_namespace):
    env = [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
           {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}]
    core.create_namespaced_pod(kube_namespace, pod_manifest(
        "trainer", python("import os; print('on', os.environ['NODE'], 'cpus', os.environ['CPUS'])"), gpus=8, env=env))
    pod = wait_phase(core, kube_namespace, "trainer", ("Succeeded", "Failed"))
    assert pod.spec.node_name in (GPU_NODE, GPU_NODE_2)
    assert pod.status.phase == "Succeeded"
    state = pod.status.container_statuses[0].state.terminated
    assert (state.exit_code, state.reason) == (0, "Completed")
    assert kube_cluster.pod_log(kube_namespace, "trainer", "main").strip() == f"on {pod.spec.node_name} cpus 2"


def test_pod_asking_16_gpus_stays_pending_unschedulable(core, kube_namespace):
    core.create_namespaced_pod(kube_namespace, pod_manifest("too-big", python("pass"), gpus=16))

    def unschedulable():
        pod = core.read_namespaced_pod("too-big", kube_namespace)
        return next((c for c in pod.status.conditions or [] if c.type == "PodScheduled" and c.status == "False"),
                    None)
    cond = wait_until(unschedulable, 30, "PodScheduled=False")
    assert cond.reason == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in cond.message
    pod = core.read_namespaced_pod("too-big", kube_namespace)
    assert pod.status.phase == "Pending" and pod.spec.node_name is None


def test_exit_code_3_fails_the_pod(core, kube_namespace):
    core.create_namespaced_pod(kube_namespace, pod_manifest("exit3", python("import sys; sys.exit(3)")))
    pod = wait_phase(core, kube_namespace, "exit3", ("Succeeded", "Failed"))
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (3, "Error")
    assert pod.status.container_statuses[0].restart_count == 0


def test_deleting_a_running_pod_kills_its_processes(core, kube_cluster, kube_namespace):
    # The container forks a grandchild: deletion must end the whole process group, not just the leader.
    code = "import subprocess, time; c = subprocess.Popen(['sleep', '600']); print(c.pid, flush=True); time.sleep(600)"
    core.create_namespaced_pod(kube_namespace, pod_manifest("sleeper", python(code)))
    pod = wait_phase(core, kube_namespace, "sleeper", ("Running",))
    leader = int(pod.status.container_statuses[0].container_id.removeprefix("local://"))
    child = int(wait_until(lambda: kube_cluster.pod_log(kube_namespace, "sleeper").strip(), 20, "child pid"))
    assert pid_alive(leader) and pid_alive(child)
    core.delete_namespaced_pod("sleeper", kube_namespace)
    wait_gone(core.read_namespaced_pod, "sleeper", kube_namespace, timeout=30, what="pod sleeper")
    assert not pid_alive(leader) and not pid_alive(child)


def test_secret_env_and_configmap_volume_reach_the_process(core, kube_cluster, kube_namespace):
    core.create_namespaced_secret(kube_namespace, {"metadata": {"name": "s3"}, "stringData": {"key": "s3cr3t"}})
    core.create_namespaced_config_map(kube_namespace, {"metadata": {"name": "job"},
                                                       "data": {"config.yaml": "frames: 64\n", "MODE": "rl"}})
    container = {
        "env": [{"name": "S3_KEY", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "key"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "CONFIG", "value": "/etc/lvr/config.yaml"}],
        "envFrom": [{"configMapRef": {"name": "job"}, "prefix": "JOB_"}],
        "volumeMounts": [{"name": "cfg", "mountPath": "/etc/lvr"}, {"name": "scratch", "mountPath": "/scratch"}]}
    code = ("import os; print(os.environ['S3_KEY'], os.environ['NS'], os.environ['JOB_MODE']);"
            "print(open(os.environ['CONFIG']).read().strip()); print(open('/etc/lvr/config.yaml').read().strip());"
            "open('/scratch/out.txt', 'w').write('done')")
    pod = pod_manifest("configured", python(code), **container)
    pod["spec"]["volumes"] = [{"name": "cfg", "configMap": {"name": "job", "items": [
        {"key": "config.yaml", "path": "config.yaml"}]}}, {"name": "scratch", "emptyDir": {}}]
    core.create_namespaced_pod(kube_namespace, pod)
    pod = wait_phase(core, kube_namespace, "configured", ("Succeeded", "Failed"))
    log = kube_cluster.pod_log(kube_namespace, "configured")
    assert pod.status.phase == "Succeeded", log
    assert log.splitlines() == [f"s3cr3t {kube_namespace} rl", "frames: 64", "frames: 64"]
    assert (kube_cluster.pod_dir(kube_namespace, "configured") / "volumes/scratch/out.txt").read_text() == "done"


def test_restart_on_failure_then_success(core, kube_namespace):
    # First run fails and leaves a mark in the emptyDir (which survives restarts); the second succeeds.
    code = "import os, sys; p = '/state/ran'; first = not os.path.exists(p); open(p, 'w').close(); sys.exit(first)"
    pod = pod_manifest("flaky", python(code), restart="OnFailure",
                       volumeMounts=[{"name": "state", "mountPath": "/state"}])
    pod["spec"]["volumes"] = [{"name": "state", "emptyDir": {}}]
    core.create_namespaced_pod(kube_namespace, pod)
    pod = wait_phase(core, kube_namespace, "flaky", ("Succeeded", "Failed"))
    status = pod.status.container_statuses[0]
    assert pod.status.phase == "Succeeded"
    assert status.restart_count == 1 and status.last_state.terminated.exit_code == 1


def test_sidecar_runs_alongside_main_container(core, kube_cluster, kube_namespace):
    # The main container waits for a file that only the concurrently running sidecar writes.
    main = python("import os, time\nwhile not os.path.exists('/shared/ready'): time.sleep(0.1)\nprint('saw sidecar')")
    side = python("import time; open('/shared/ready', 'w').close(); time.sleep(1)")
    pod = pod_manifest("with-sidecar", main, volumeMounts=[{"name": "shared", "mountPath": "/shared"}])
    pod["spec"]["containers"].append({"name": "rollout", "image": "longvideo-rl-vllm:dev", "command": side,
                                      "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]})
    pod["spec"]["volumes"] = [{"name": "shared", "emptyDir": {}}]
    core.create_namespaced_pod(kube_namespace, pod)
    pod = wait_phase(core, kube_namespace, "with-sidecar", ("Succeeded", "Failed"))
    assert pod.status.phase == "Succeeded"
    assert kube_cluster.pod_log(kube_namespace, "with-sidecar", "main").strip() == "saw sidecar"


def test_pod_processes_act_as_their_service_account(core, kube_cluster, kube_namespace):
    rbac = "/apis/rbac.authorization.k8s.io/v1/namespaces/" + kube_namespace
    kube_cluster.api.create(f"{rbac}/rolebindings", {
        "metadata": {"name": "default-view"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": kube_namespace}]})
    code = ("import os; from kubernetes import client, config; config.load_kube_config();"
            "print(client.CoreV1Api().read_namespaced_pod(os.environ['HOSTNAME'], '%s').spec.node_name)"
            % kube_namespace)
    core.create_namespaced_pod(kube_namespace, pod_manifest("whoami", python(code)))
    pod = wait_phase(core, kube_namespace, "whoami", ("Succeeded", "Failed"))
    log = kube_cluster.pod_log(kube_namespace, "whoami")
    assert pod.status.phase == "Succeeded", log
    assert log.strip() == pod.spec.node_name
