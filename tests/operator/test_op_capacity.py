"""Gang admission arithmetic: free GPU slots per matching, Ready, tolerated node."""

from __future__ import annotations

from lvr_operator.api.common import DEFAULT_NODE_SELECTOR, DEFAULT_TOLERATIONS
from lvr_operator.reconcile.capacity import free_slots


def _node(name, gpus=8, ready="True", taint=True, labels=None):
    return {"metadata": {"name": name, "labels": labels if labels is not None else {"nvidia.com/gpu.present": "true"}},
            "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}] if taint else []},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus)},
                       "conditions": [{"type": "Ready", "status": ready}]}}


def _pod(gpus, node=None, phase="Running"):
    return {"spec": {"nodeName": node, "containers": [{"resources": {"limits": {"nvidia.com/gpu": gpus}}}]},
            "status": {"phase": phase}}


def _slots(nodes, pods, gpus=8, tolerations=DEFAULT_TOLERATIONS):
    return free_slots(nodes, pods, gpus, DEFAULT_NODE_SELECTOR, list(tolerations))


def test_counts_free_nodes_and_subtracts_used_and_unbound():
    nodes = [_node("a"), _node("b")]
    assert _slots(nodes, []) == 2
    assert _slots(nodes, [_pod(8, "a")]) == 1
    assert _slots(nodes, [_pod(8, "a"), _pod(8)]) == 0           # a pending, unbound 8-GPU pod
    assert _slots(nodes, [_pod(8, "a", phase="Succeeded")]) == 2
    assert _slots(nodes, [_pod(4, "a")], gpus=4) == 3


def test_unready_unlabelled_or_tainted_nodes_do_not_count():
    assert _slots([_node("a", ready="Unknown")], []) == 0
    assert _slots([_node("a", labels={})], []) == 0
    assert _slots([_node("a")], [], tolerations=[]) == 0
    assert _slots([_node("a", taint=False)], [], tolerations=[]) == 1


def test_cpu_jobs_are_not_gated():
    assert free_slots([], [], 0, {}, []) is None


def test_gpu_holders_name_our_jobs_and_other_pods_most_gpus_first():
    from lvr_operator.reconcile.capacity import gpu_holders

    def owned(kind, owner, gpus, name="p", phase="Running"):
        pod = _pod(gpus, "a", phase)
        pod["metadata"] = {"name": name, "namespace": "ns",
                           "labels": {"longvideo.dev/kind": kind, "longvideo.dev/owner": owner}}
        return pod

    other = _pod(2, "a")
    other["metadata"] = {"name": "notebook", "namespace": "team"}
    pods = [owned("sftjob", "big", 8, "w0"), owned("sftjob", "big", 8, "w1"), owned("rljob", "done", 8, phase="Succeeded"),
            other, _pod(0, "a")]
    assert gpu_holders(pods) == ["SFTJob ns/big (2 pods, 16 GPUs)", "pod team/notebook (1 pod, 2 GPUs)"]
    # a job's status names only holders in its own namespace; the others are counted
    assert gpu_holders(pods, namespace="team") == ["pods in other namespaces (2 pods, 16 GPUs)",
                                                   "pod team/notebook (1 pod, 2 GPUs)"]
    assert gpu_holders(pods, namespace="ns") == ["SFTJob ns/big (2 pods, 16 GPUs)",
                                                 "pods in other namespaces (1 pod, 2 GPUs)"]


def test_native_sidecar_and_init_container_gpus_count():
    from lvr_operator.reconcile.capacity import pod_gpus

    def c(gpus, always=False):
        return {"resources": {"limits": {"nvidia.com/gpu": gpus}}, **({"restartPolicy": "Always"} if always else {})}
    sidecar = {"spec": {"nodeName": "a", "initContainers": [c(2, always=True)], "containers": [c(6)]},
               "status": {"phase": "Running"}}
    assert pod_gpus(sidecar) == 8 and _slots([_node("a")], [sidecar], gpus=1) == 0
    one_off = {"spec": {"initContainers": [c(1, always=True), c(8)], "containers": [c(2)]}}
    assert pod_gpus(one_off) == 9                      # the one-off init container runs beside the sidecar
