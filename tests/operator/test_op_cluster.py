"""The operator against the local cluster: real apiserver, scheduler, kubelet stand-in running a mock
trainer (mock_trainer.py) as the worker processes."""

from __future__ import annotations

import pytest
from kubernetes import client
from op_cluster import create as _create
from op_cluster import dataset as _dataset
from op_cluster import job_spec as _job_spec
from op_cluster import wait_phase as _wait_phase

from lvr_localcluster.pytest_plugin import wait_until

pytestmark = pytest.mark.cluster
G, V = "longvideo.dev", "v1alpha1"


def test_lifecycle_dataset_then_sft_then_rl_to_succeeded(op, crds, kube_namespace, k8s_client, tmp_path):
    ns, api = kube_namespace, crds
    _create(api, ns, "rljobs", "RLJob", "rl", _job_spec(model={"fromSFTJob": "sft"},
                                                                 rollout={"engine": "transformers"}))
    _create(api, ns, "sftjobs", "SFTJob", "sft", _job_spec())
    waiting = _wait_phase(api, ns, "rljobs", "rl", "WaitingForDependencies", 30)
    assert "LongVideoDataset 'ds'" in waiting["message"]
    ds = _dataset(api, ns, tmp_path)     # counts from the validate step's termination message
    assert ds["rows"] == {"total": 1, "valid": 1, "invalid": 0}, ds
    sft = _wait_phase(api, ns, "sftjobs", "sft", "Succeeded", 90)
    assert sft["progress"]["summary"] == "3/3" and sft["progress"]["lastCheckpoint"] == "s3://ckpt/step-3"
    rl = _wait_phase(api, ns, "rljobs", "rl", "Succeeded", 90)
    assert rl["modelUri"] == "s3://ckpt/step-3/model" and rl["progress"]["reward"] == 1.0
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


def test_the_gpu_examples_are_admitted(op, crds, kube_namespace):
    """examples/k8s/ (an 8xA100 node, MinIO from the chart) pass the apiserver's schema and the operator's
    admission (the trainer's own runnable check): each waits for its dependency or its pod, none is
    InvalidSpec."""
    import yaml

    from op_cluster import EXAMPLES_K8S

    ns, api = kube_namespace, crds
    docs = [yaml.safe_load(p.read_text()) for p in sorted(EXAMPLES_K8S.glob("*.yaml"))]
    assert {d["kind"] for d in docs} == {"LongVideoDataset", "SFTJob", "RLJob"}
    for doc in docs:
        api.create_namespaced_custom_object(G, V, ns, doc["kind"].lower() + "s", doc)
    for doc in docs:
        plural, name = doc["kind"].lower() + "s", doc["metadata"]["name"]
        status = wait_until(lambda: (s := api.get_namespaced_custom_object(G, V, ns, plural, name).get("status") or {})
                            .get("observedGeneration") and s.get("message") and s, 60, f"{name} reconciled")
        invalid = [c for c in status.get("conditions", []) if c["type"] == "InvalidSpec" and c["status"] == "True"]
        assert not invalid and status["phase"] != "Failed", (name, status)


def test_a_dataset_built_from_raw_videos_by_its_preparation_pod(op, crds, kube_namespace, k8s_client, s3_server,
                                                                 tmp_path):
    """source.build on the local cluster: the pod runs `lvr data build` against an OpenAI-compatible server
    on loopback (scripted; API key from a Secret), then validates and caches the rows it wrote to S3; the
    status carries each stage's counts."""
    from minio import Minio

    from lvr_localcluster.chat_server import ChatServer
    from lvr_trainer.data.synth import SynthSpec, synthesise

    ns, api, core = kube_namespace, crds, client.CoreV1Api(k8s_client)
    synthesise(tmp_path / "raw", SynthSpec(videos=2, seconds=16, fps=4, width=112, height=112, seed=21))
    mc = Minio(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, secure=False)
    for mp4 in sorted((tmp_path / "raw" / "videos").glob("*.mp4")):
        mc.fput_object(s3_server.bucket, f"{ns}/raw/{mp4.name}", str(mp4))
    core.create_namespaced_secret(ns, {"metadata": {"name": "s3"}, "stringData": {
        "accessKey": s3_server.access_key, "secretKey": s3_server.secret_key}})
    core.create_namespaced_secret(ns, {"metadata": {"name": "endpoints"}, "stringData": {"apiKey": "k-123"}})
    with ChatServer(tmp_path / "chat.jsonl", {"model": "fake-model", "require_key": "k-123"}) as url:
        spec = {"source": {"jsonl": f"s3://{s3_server.bucket}/{ns}/built/train.jsonl",
                           "build": {"videos": f"s3://{s3_server.bucket}/{ns}/raw/", "captioner": {"url": url},
                                     "reasoner": {"url": url}, "apiKeySecret": {"name": "endpoints"},
                                     "clipSeconds": 8, "questionsPerCategory": 3}},
                "frames": 8, "maxPixels": 3136, "maxErrorRate": 0.5, "encoder": {"preset": "tiny"},
                "resources": {"gpusPerNode": 0},
                "cache": {"s3": {"endpoint": s3_server.url, "bucket": s3_server.bucket, "prefix": f"{ns}/cache",
                                 "credentialsSecret": "s3"}}}
        _create(api, ns, "longvideodatasets", "LongVideoDataset", "built", spec)
        seen = wait_until(lambda: (s := api.get_namespaced_custom_object(G, V, ns, "longvideodatasets", "built")
                                   .get("status") or {}).get("phase") in ("Building", "Validating", "Ready") and s,
                          60, "the dataset building")
        ready = _wait_phase(api, ns, "longvideodatasets", "built", "Ready", 300)
    assert seen["phase"] in ("Building", "Validating", "Ready")
    built = ready["built"]
    assert built["videos"] == 2 and built["clips"] == 4 and 0 < built["kept"] < built["questions"]
    assert sum(built["dropped"].values()) == built["questions"] - built["kept"] and built["calls"] > 0
    assert ready["rows"]["valid"] > 0 and ready["cachedVideos"] >= 1
    assert f"built {built['kept']} questions from 2 videos" in ready["message"]
