"""The main job end to end on the local cluster, as `make demo` runs it, with short runs and faults.

helm-installed operator (in its own pod) -> dataset in S3 (one corrupt video) -> examples/local/ applied
with small step counts -> SFTJob: trainer killed mid-run (the gang restarts and resumes from its latest
checkpoint), then the operator's pod deleted (its Deployment brings it back, no duplicate workers) ->
RLJob from the SFTJob (same weights, by digest), its rollouts served by a rollout sidecar (`lvr
rollout-server` beside the trainer, sent the weights after every step), with the S3 server frozen for
20 s, then its worker pod deleted (a preemption: it resumes from the checkpoint its SIGTERM wrote) -> both
checkpoints scored. Malformed resources applied beside the good ones are each refused, naming the field.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lvr_localcluster.mainjob import (PLURALS, S3Target, apply, compare, eval_checkpoint, get, install_operator, helm,
                                      load_examples, upload_tree, worker_pods, Narrator)
from lvr_localcluster.ports import free_port
from lvr_localcluster.procs import process_tree
from lvr_localcluster.pytest_plugin import wait_until
from lvr_localcluster.s3 import S3Server

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]
G, V = "longvideo.dev", "v1alpha1"
VIDEOS = 40
ROLLOUT_PORT = free_port()      # the local cluster's pods share the host's network
# Short runs: long enough to kill and freeze things mid-run, short enough for CI.
OVERRIDES = {
    "synth": {"maxErrorRate": 0.05},
    "sft-tiny": {"trainer": {"train": {"steps": 600, "batch_size": 4, "log_every": 10, "save_every": 100},
                             "data": {"val": None}},
                 "runPolicy": {"backoffLimit": 3, "backoffSeconds": 1}},
    "rl-tiny": {"trainer": {"train": {"steps": 120, "batch_size": 2, "grad_accum": 1, "eval_every": 0,
                                      "save_every": 20, "log_every": 1},
                            "rl": {"group_size": 4, "max_new_tokens": 24, "mini_batches": 1},
                            "data": {"val": None}},
                "rollout": {"mode": "sidecar", "port": ROLLOUT_PORT, "gpus": 0},   # the local nodes: fake GPUs
                "runPolicy": {"backoffLimit": 4, "backoffSeconds": 1}},
}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """Our own S3 server (we freeze it mid-run), with the examples' bucket `lvr`."""
    server = S3Server("lvr", tmp_path_factory.mktemp("s3-e2e"))
    endpoint = server.start()
    yield server, S3Target(endpoint.url, endpoint.access_key, endpoint.secret_key)
    server.stop()


def _synth(tmp: Path) -> tuple[Path, int]:
    """The demo's kind of data, small; plus a row whose video is corrupt. (directory, train videos)"""
    data = tmp / "data"
    subprocess.run([str(Path(sys.executable).parent / "lvr"), "data", "synth", "--out", str(data), "--videos",
                    str(VIDEOS), "--seconds", "16", "--fps", "4", "--size", "112x112", "--seed", "3",
                    "--teacher-slip", "0.6", "--slip-on", "first_of", "last_of"], check=True,
                   stdout=subprocess.DEVNULL)
    # one corrupt video: the dataset tolerates it (maxErrorRate) and lists it instead of failing
    rows = (data / "train.jsonl").read_text().splitlines()
    videos = len({json.loads(r)["video"] for r in rows})
    bad = json.loads(rows[0])
    bad.update(id="corrupt-1", video="videos/corrupt.mp4")
    (data / "videos" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    (data / "train.jsonl").write_text("\n".join(rows + [json.dumps(bad)]) + "\n")
    return data, videos


def _malformed(endpoint: str) -> list[tuple[dict, str]]:
    """(resource, what its refusal must name): by the API server's schema (422) or InvalidSpec."""
    def job(kind, name, **spec):
        base = {"datasetRef": {"name": "synth"}, "model": {"preset": "tiny"}, "output": {"uri": f"s3://lvr/e2e/{name}"},
                "resources": {"gpusPerNode": 1}}
        return {"apiVersion": f"{G}/{V}", "kind": kind, "metadata": {"name": name}, "spec": {**base, **spec}}
    return [
        (job("SFTJob", "bad-type", frames="many"), "spec.frames"),
        (job("SFTJob", "bad-gpus", resources={"gpusPerNode": 9}), "gpusPerNode"),
        (job("SFTJob", "bad-key", trainer={"optim": {"lrr": 0.1}}), "spec.trainer.optim.lrr"),
        (job("SFTJob", "bad-sp", trainer={"parallel": {"sequence_parallel": 3}}), "spec.trainer.parallel.sequence_parallel"),
        (job("SFTJob", "bad-uri", output={"uri": "ftp://host/out"}), "spec.output.uri"),
        (job("RLJob", "no-gpu-left", rollout={"engine": "vllm", "mode": "sidecar"}), "rollout.gpus"),
        (job("SFTJob", "no-dataset", datasetRef={"name": "nope"}), "spec.datasetRef.name"),
        (job("RLJob", "no-sft", model={"fromSFTJob": "nope"}), "spec.model.fromSFTJob"),
    ]


def _create_or_refusal(custom, ns: str, doc: dict) -> str | None:
    from kubernetes.client.rest import ApiException

    try:
        apply(custom, ns, [doc])
        return None
    except ApiException as err:
        assert err.status == 422, err
        return err.body


def _invalid_spec(obj: dict) -> dict | None:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "InvalidSpec" and c["status"] == "True"), None)


def _kill_trainer(pod) -> None:
    """SIGKILL the trainer container, every process of it (as a runtime kills a container's cgroup:
    torchrun's workers live in sessions of their own). The local kubelet's containerID is local://<pid>."""
    status = next(c for c in pod.status.container_statuses if c.name == "trainer")
    for pid in process_tree(int(status.container_id.removeprefix("local://"))):
        os.kill(pid, signal.SIGKILL)


def _s3_text(s3: S3Target, key: str, bucket: str = "lvr") -> str:
    from minio import Minio

    resp = Minio(s3.url.split("://")[1], s3.access_key, s3.secret_key, secure=False).get_object(bucket, key)
    try:
        return resp.read().decode()
    finally:
        resp.close()
        resp.release_conn()


def _digest_of(model_uri: str, s3: S3Target, tmp: Path) -> str:
    env = {**os.environ, **s3.env(), "HOME": str(tmp / "home")}
    code = ("import sys; from lvr_trainer.config import ModelConfig; from lvr_trainer.model.loading import "
            "files_digest, load_model, local_model_dir; load_model(ModelConfig(path=sys.argv[1])); "
            "print(files_digest(local_model_dir(sys.argv[1])))")
    out = subprocess.run([sys.executable, "-c", code, model_uri], env=env, check=True, text=True,
                         stdout=subprocess.PIPE).stdout
    return out.strip().splitlines()[-1]


def test_main_job_end_to_end_with_faults(kube_cluster, k8s_client, kube_namespace, s3, tmp_path):
    from kubernetes import client

    server, target = s3
    custom, core, apps = client.CustomObjectsApi(k8s_client), client.CoreV1Api(k8s_client), client.AppsV1Api(k8s_client)
    ns = kube_namespace
    core.create_namespaced_secret(ns, {"metadata": {"name": "lvr-s3"},
                                       "stringData": {"accessKey": target.access_key, "secretKey": target.secret_key}})
    data, train_videos = _synth(tmp_path)
    assert upload_tree(target, data, "s3://lvr/demo/data") > VIDEOS

    op_ns = f"{ns}-op"[:63]
    install_operator(kube_cluster.kubeconfig, "lvr-e2e", op_ns, watch=[ns])
    op_pods = core.list_namespaced_pod(op_ns).items
    assert len(op_pods) == 1 and op_pods[0].status.phase == "Running"

    docs = load_examples(target.url, OVERRIDES)
    apply(custom, ns, docs)
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    narrator = Narrator(custom, ns, names, print, every_s=5)

    # -- malformed resources: refused by the schema, or InvalidSpec naming the field -------------------
    refusals = {}
    for doc, field in _malformed(target.url):
        body = _create_or_refusal(custom, ns, doc)
        refusals[doc["metadata"]["name"]] = (body, field, doc["kind"])
    no_secret = {"apiVersion": f"{G}/{V}", "kind": "LongVideoDataset", "metadata": {"name": "no-secret"},
                 "spec": {"source": {"jsonl": "s3://lvr/demo/data/val.jsonl"}, "resources": {"gpusPerNode": 0},
                          "cache": {"s3": {"endpoint": target.url, "bucket": "lvr", "credentialsSecret": "missing"}}}}
    apply(custom, ns, [no_secret])
    for name, (body, field, kind) in refusals.items():
        if body is not None:
            assert field in body, f"{name}: the API server's refusal does not name {field}: {body[:500]}"
            continue
        invalid = wait_until(lambda: _invalid_spec(get(custom, ns, kind, name)), 90, f"{name}: InvalidSpec")
        assert field in invalid["message"], (name, invalid)
    stuck = wait_until(lambda: "CreateContainerConfigError" in ((get(custom, ns, "LongVideoDataset", "no-secret")
                                                                .get("status") or {}).get("message") or ""),
                       60, "the dataset's pod reason in its status")
    assert stuck

    # -- the dataset: validated, cached, the corrupt video skipped and listed ---------------------------
    ds = narrator.wait("LongVideoDataset", "synth", {"Ready", "Failed"}, 600)
    assert ds["phase"] == "Ready", ds
    assert ds["failedVideos"] == 1 and "corrupt.mp4" in ds["failedVideoExamples"][0]
    assert ds["cachedVideos"] == train_videos and ds["rows"]["invalid"] == 1

    # -- SFT: progress while running; a killed trainer resumes from its latest checkpoint -------------
    sft_status = wait_until(lambda: ((s := narrator.poll()[("SFTJob", "sft-tiny")]).get("progress") or {})
                            .get("lastCheckpoint") and s, 600, "an SFT checkpoint", interval=1)
    progress = sft_status["progress"]
    assert sft_status["phase"] == "Running" and 0 < progress["step"] < progress["totalSteps"] == 600
    (pod,) = [p for p in worker_pods(core, ns, "sft-tiny")]
    reported = int(re.search(r"step-(\d+)", progress["lastCheckpoint"]).group(1))
    _kill_trainer(pod)
    killed_at = int(re.search(r"step-(\d+)", _s3_text(target, "demo/runs/sft-tiny/checkpoints/latest")).group(1))
    assert killed_at >= reported > 0        # the newest checkpoint in S3 may be newer than the last report
    wait_until(lambda: narrator.poll()[("SFTJob", "sft-tiny")].get("restarts") == 1, 60, "the SFT gang restart",
               interval=1)
    events = core.list_namespaced_event(ns, field_selector="involvedObject.name=sft-tiny").items
    assert any("exited with code 137" in (e.message or "") and e.type == "Warning" for e in events), \
        [e.message for e in events]
    wait_until(lambda: narrator.poll()[("SFTJob", "sft-tiny")].get("phase") == "Running", 120, "SFT running again")

    # -- the operator's pod deleted mid-run: its Deployment replaces it; no duplicate workers ---------
    (op_pod,) = core.list_namespaced_pod(op_ns).items
    core.delete_namespaced_pod(op_pod.metadata.name, op_ns)
    deadline, most = time.monotonic() + 40, 0
    while time.monotonic() < deadline:
        active = [p for p in worker_pods(core, ns, "sft-tiny") if p.status.phase in ("Pending", "Running")]
        most = max(most, len(active))
        new = [p for p in core.list_namespaced_pod(op_ns).items
               if p.metadata.name != op_pod.metadata.name and p.status.phase == "Running"]
        if new and time.monotonic() > deadline - 30:
            break
        time.sleep(1)
    assert new, "the operator Deployment did not bring a new pod"
    assert most <= 1, f"{most} SFT workers ran at once"
    sft_status = narrator.wait("SFTJob", "sft-tiny", {"Succeeded", "Failed"}, 900)
    assert sft_status["phase"] == "Succeeded", sft_status
    pods = {int(p.metadata.labels[f"{G}/attempt"]): p.metadata.name for p in worker_pods(core, ns, "sft-tiny")}
    log = kube_cluster.pod_log(ns, pods[1], "trainer")
    resumed = re.search(r"sft: steps (\d+)->600", log)
    assert resumed and int(resumed.group(1)) == killed_at, log[-2000:]    # the step count continued

    # -- RL from the SFT weights, with S3 frozen for 20 s mid-run --------------------------------------
    rl_status = wait_until(lambda: ((s := narrator.poll()[("RLJob", "rl-tiny")]).get("progress") or {})
                           .get("step") and s, 600, "RL progress", interval=1)
    assert rl_status["phase"] == "Running" and rl_status["modelUri"] == sft_status["progress"]["lastCheckpoint"] + "/model"
    (rl_pod,) = worker_pods(core, ns, "rl-tiny")
    assert [c.name for c in rl_pod.spec.containers] == ["trainer", "rollout"]    # Kubernetes 1.20: no native sidecars
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(20)
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)

    # -- the RL worker pod deleted mid-run (a preemption, as a drain or a higher-priority job would): its
    #    trainer checkpoints on SIGTERM at the next step boundary (the sidecar serves it until then) and
    #    the gang resumes from that checkpoint, counted in status.preemptions, not as a restart -----------
    wait_until(lambda: narrator.poll()[("RLJob", "rl-tiny")].get("phase") == "Running", 300, "RL running")
    restarts_before = narrator.poll()[("RLJob", "rl-tiny")].get("restarts") or 0
    (victim,) = worker_pods(core, ns, "rl-tiny")
    core.delete_namespaced_pod(victim.metadata.name, ns)          # the pod's grace period: runPolicy's 60 s
    wait_until(lambda: narrator.poll()[("RLJob", "rl-tiny")].get("preemptions") == 1, 180, "the preemption",
               interval=1)
    rl_status = narrator.wait("RLJob", "rl-tiny", {"Succeeded", "Failed"}, 900)
    assert rl_status["phase"] == "Succeeded", rl_status
    assert rl_status["preemptions"] == 1 and (rl_status.get("restarts") or 0) == restarts_before, rl_status
    victim_dir = kube_cluster.state_dir / "pods" / ns / f"{victim.metadata.name}.{victim.metadata.uid[:8]}"
    victim_log = (victim_dir / "logs" / "trainer.log").read_text(errors="replace")
    stopped = re.search(r"lvr-preempted: stopped on SIGTERM at step (\d+)", victim_log)
    assert stopped, victim_log[-3000:]
    final_pod = max(worker_pods(core, ns, "rl-tiny"), key=lambda p: int(p.metadata.labels[f"{G}/attempt"]))
    final_log = kube_cluster.pod_log(ns, final_pod.metadata.name, "trainer")
    resumed = re.search(r"rl: steps (\d+)->120", final_log)
    assert resumed and resumed.group(1) == stopped.group(1), final_log[-2000:]   # from the SIGTERM checkpoint
    assert rl_status["progress"]["initialWeights"] == _digest_of(rl_status["modelUri"], target, tmp_path)
    # the rollouts came from the sidecar, which loaded the SFT model from S3 and was shut down at the end
    sidecar_log = kube_cluster.pod_log(ns, rl_pod.metadata.name, "rollout")
    assert f"transformers engine ready, serving on http://127.0.0.1:{ROLLOUT_PORT}" in sidecar_log, sidecar_log[-2000:]

    # -- the good jobs were served throughout; checkpoints are in S3; both models score -------------------
    from minio import Minio

    listing = Minio(target.url.split("://")[1], target.access_key, target.secret_key, secure=False)
    for job, last in (("sft-tiny", "step-000600"), ("rl-tiny", "step-000120")):
        keys = {o.object_name for o in listing.list_objects("lvr", prefix=f"demo/runs/{job}/", recursive=True)}
        assert f"demo/runs/{job}/checkpoints/{last}/model/model.safetensors" in keys, sorted(keys)[:20]
    out = tmp_path / "eval"
    for label, status in (("sft", sft_status), ("rl", rl_status)):
        result = eval_checkpoint(status["progress"]["lastCheckpoint"] + "/model", str(data / "test.jsonl"),
                                 out / label, target, 3136, 48, limit=16)
        assert next(iter(result["by_frames"].values()))["n"] == 16
    table = compare(out / "sft", out / "rl")
    assert "overall" in table
    # the resources first (the operator removes its finalizers), then the release
    def remaining():
        return [(p, o["metadata"]["name"]) for p in PLURALS.values()
                for o in custom.list_namespaced_custom_object(G, V, ns, p)["items"]]
    for plural, name in remaining():
        custom.delete_namespaced_custom_object(G, V, ns, plural, name)
    wait_until(lambda: not remaining(), 90, "every resource deleted by its finalizer")
    helm("uninstall", "lvr-e2e", "--namespace", op_ns, kubeconfig=kube_cluster.kubeconfig)
