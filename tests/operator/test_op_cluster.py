"""The operator against the local cluster: real apiserver, scheduler, kubelet stand-in running a mock
trainer (mock_trainer.py) as the worker processes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from lvr_localcluster.pytest_plugin import wait_until

pytestmark = pytest.mark.cluster
CRDS = Path(__file__).resolve().parents[2] / "crds"
MOCK = str(Path(__file__).resolve().parent / "mock_trainer.py")
G, V = "longvideo.dev", "v1alpha1"
ROW = {"id": "q1", "video": "s3://videos/a.mp4", "question": "What happens first?", "answer": "A",
       "options": {"A": "red", "B": "blue", "C": "green", "D": "white"}, "category": "temporal", "duration": 60}


@pytest.fixture(scope="module")
def crds(k8s_client):
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


def _create(api, ns, plural, kind, name, spec):
    return api.create_namespaced_custom_object(G, V, ns, plural, {"apiVersion": f"{G}/{V}", "kind": kind,
                                                                  "metadata": {"name": name}, "spec": spec})


def _status(api, ns, plural, name):
    return api.get_namespaced_custom_object(G, V, ns, plural, name).get("status") or {}


def _wait_phase(api, ns, plural, name, phase, timeout=60):
    return wait_until(lambda: (s := _status(api, ns, plural, name)).get("phase") == phase and s, timeout,
                      f"{plural}/{name} phase {phase}", interval=0.5)


def _dataset(api, ns, tmp_path):
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text(json.dumps(ROW) + "\n")
    _create(api, ns, "longvideodatasets", "LongVideoDataset", "ds",
            {"source": {"jsonl": str(jsonl)}, "frames": 8, "resources": {"gpusPerNode": 0}})
    return _wait_phase(api, ns, "longvideodatasets", "ds", "Ready", 90)


def _job_spec(**over):
    mock = [sys.executable, MOCK, *over.pop("args", [])]
    spec = {"datasetRef": {"name": "ds"}, "model": {"uri": "s3://models/base"}, "command": mock,
            "trainer": {"train": {"steps": 3}}, "resources": {"nodes": 1, "gpusPerNode": 8},
            "output": {"uri": "s3://ckpt/job"}, "runPolicy": {"backoffLimit": 1, "backoffSeconds": 1}}
    spec.update(over)
    return spec


def test_lifecycle_dataset_then_sft_then_rl_to_succeeded(op, crds, kube_namespace, k8s_client, tmp_path):
    ns, api = kube_namespace, crds
    _create(api, ns, "rljobs", "RLJob", "rl", _job_spec(model={"fromSFTJob": "sft"}, rollout={"engine": "hf"}))
    _create(api, ns, "sftjobs", "SFTJob", "sft", _job_spec())
    waiting = _wait_phase(api, ns, "rljobs", "rl", "WaitingForDependencies", 30)
    assert "LongVideoDataset 'ds'" in waiting["message"]
    _dataset(api, ns, tmp_path)
    sft = _wait_phase(api, ns, "sftjobs", "sft", "Succeeded", 90)
    assert sft["progress"]["summary"] == "3/3" and sft["progress"]["lastCheckpoint"] == "s3://ckpt/step-3"
    rl = _wait_phase(api, ns, "rljobs", "rl", "Succeeded", 90)
    assert rl["modelUri"] == "s3://ckpt/step-3" and rl["progress"]["reward"] == 1.0
    events = client.CoreV1Api(k8s_client).list_namespaced_event(ns).items
    assert "JobSucceeded" in {e.reason for e in events if e.involved_object.name == "rl"}


def test_failure_restarts_gang_then_fails_at_backoff_limit(op, crds, kube_namespace, tmp_path):
    ns, api = kube_namespace, crds
    _dataset(api, ns, tmp_path)
    _create(api, ns, "sftjobs", "SFTJob", "flaky", _job_spec(args=["--fail-attempts", "1"]))
    ok = _wait_phase(api, ns, "sftjobs", "flaky", "Succeeded", 90)
    assert ok["restarts"] == 1
    _create(api, ns, "sftjobs", "SFTJob", "broken", _job_spec(args=["--exit-code", "3"]))
    failed = _wait_phase(api, ns, "sftjobs", "broken", "Failed", 90)
    assert failed["restarts"] == 1 and "exited with code 3" in failed["message"]


def test_invalid_spec_and_suspend_and_deletion(op, crds, kube_namespace, k8s_client, tmp_path):
    ns, api, core = kube_namespace, crds, client.CoreV1Api(k8s_client)
    _dataset(api, ns, tmp_path)
    _create(api, ns, "sftjobs", "SFTJob", "typo", _job_spec(trainer={"train": {"steps": 3}, "optim": {"lrr": 1}}))
    bad = _wait_phase(api, ns, "sftjobs", "typo", "Failed", 30)
    assert "did you mean 'lr'" in bad["message"]
    _create(api, ns, "sftjobs", "SFTJob", "long", _job_spec(args=["--steps", "1000", "--sleep", "0.5"]))
    _wait_phase(api, ns, "sftjobs", "long", "Running", 60)
    api.patch_namespaced_custom_object(G, V, ns, "sftjobs", "long", {"spec": {"runPolicy": {"suspend": True}}})
    _wait_phase(api, ns, "sftjobs", "long", "Suspended", 30)
    wait_until(lambda: not core.list_namespaced_pod(ns, label_selector="longvideo.dev/owner=long").items, 60,
               "pods of a suspended job deleted")
    api.patch_namespaced_custom_object(G, V, ns, "sftjobs", "long", {"spec": {"runPolicy": {"suspend": False}}})
    _wait_phase(api, ns, "sftjobs", "long", "Running", 60)
    api.delete_namespaced_custom_object(G, V, ns, "sftjobs", "long")
    wait_until(lambda: not core.list_namespaced_pod(ns, label_selector="longvideo.dev/owner=long").items
               and not core.list_namespaced_config_map(ns, label_selector="longvideo.dev/owner=long").items,
               60, "children of a deleted job removed")
