"""Multi-node gangs on the local cluster, with the real trainer: a 2-node SFTJob and a 2-node RLJob (tiny
model, CPU, gloo) rendezvous through the headless Service (each pod has its own address and cluster DNS
names, hack/lvr_localcluster/podnet.py), run on two nodes to Succeeded, and equal the same config run as
one node with 2 processes (DDP equivalence)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from kubernetes import client
from lvr_operator.manifests.common import config_name
from op_cluster import G, V, create, ready_dataset, wait_phase

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(900)]
ANTI_AFFINITY = lambda job: {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [  # noqa: E731
    {"labelSelector": {"matchLabels": {"longvideo.dev/owner": job}}, "topologyKey": "kubernetes.io/hostname"}]}}


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    from lvr_trainer.data.synth import SynthSpec, synthesise

    out = tmp_path_factory.mktemp("multinode-data")
    synthesise(out, SynthSpec(videos=4, seconds=8, fps=4, width=56, height=56, seed=5))
    return out


def _ready_synth_dataset(api, ns: str, data: Path, tmp_path: Path) -> None:
    """LongVideoDataset `ds` over the synthetic videos, marked Ready by hand (no cache to build)."""
    ready_dataset(api, ns, tmp_path)
    api.patch_namespaced_custom_object(G, V, ns, "longvideodatasets", "ds",
                                       {"spec": {"source": {"jsonl": str(data / "train.jsonl")}}})
    api.patch_namespaced_custom_object_status(G, V, ns, "longvideodatasets", "ds",
                                              {"status": {"phase": "Ready", "observedGeneration": 2}})


def _job(kind: str, name: str, out: Path, trainer: dict) -> dict:
    spec = {"datasetRef": {"name": "ds"}, "model": {"preset": "tiny"}, "output": {"uri": str(out)},
            "resources": {"nodes": 2, "gpusPerNode": 0},
            "placement": {"affinity": ANTI_AFFINITY(name)},
            "trainer": {"model": {"tokenizer": "tiny"}, "cache": {"enabled": False},
                        "data": {"sampling": {"num_frames": 8, "max_pixels": 3136, "min_pixels": 784}},
                        **trainer},
            "runPolicy": {"backoffLimit": 0}}
    if kind == "RLJob":
        spec["rollout"] = {"engine": "transformers", "mode": "inprocess"}
    return spec


def _single_node_run(config_text: str, out: Path, tmp_path: Path, stage: str) -> None:
    """The job's own trainer config, as one node with 2 processes (torchrun --standalone)."""
    cfg = yaml.safe_load(config_text)
    cfg["output"]["dir"] = str(out)
    path = tmp_path / f"{stage}-one-node.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "lvr_trainer.cli", stage, "--config", str(path)], capture_output=True, text=True,
                         timeout=600, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]


def _weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "checkpoints" / f"step-{step:06d}" / "model" / "model.safetensors"))


@pytest.mark.parametrize("kind", ["SFTJob", "RLJob"])
def test_two_node_job_runs_across_two_nodes_and_equals_one_node_two_processes(
        kind, op, crds, kube_cluster, kube_namespace, k8s_client, synth_data, tmp_path):
    ns, api, core = kube_namespace, crds, client.CoreV1Api(k8s_client)
    _ready_synth_dataset(api, ns, synth_data, tmp_path)
    steps = 2
    trainer = {"train": {"steps": steps, "batch_size": 1, "save_every": 0, "torch_threads": 1, "seed": 3},
               "optim": {"lr": 1e-3, "warmup_steps": 0}, "parallel": {"strategy": "ddp", "timeout_s": 120}}
    if kind == "RLJob":
        trainer["rl"] = {"group_size": 4, "max_new_tokens": 8, "kl_coef": 0.01}
    plural, name, stage = kind.lower() + "s", "two-" + kind[:2].lower(), "sft" if kind == "SFTJob" else "rl"
    out = tmp_path / "two-nodes"
    create(api, ns, plural, kind, name, _job(kind, name, out, trainer))
    done = wait_phase(api, ns, plural, name, "Succeeded", 600)
    assert not done.get("restarts"), done
    pods = [p for p in core.list_namespaced_pod(ns).items if p.metadata.labels.get("longvideo.dev/owner") == name]
    assert len(pods) == 2
    assert len({p.spec.node_name for p in pods}) == 2                         # two nodes
    ips = {p.status.pod_ip for p in pods}
    assert len(ips) == 2 and "127.0.0.1" not in ips                          # two addresses of their own
    rank0 = next(p for p in pods if p.metadata.labels["longvideo.dev/node-rank"] == "0")
    log = kube_cluster.pod_log(ns, rank0.metadata.name, "trainer")
    assert f"{stage}: steps 0->{steps}" in log, log[-2000:]
    config = core.read_namespaced_config_map(config_name(kind, name), ns).data["trainer.yaml"]
    single = tmp_path / "one-node"
    t0 = time.monotonic()
    _single_node_run(config, single, tmp_path, stage)
    one_node_s = time.monotonic() - t0
    two_node_s = _seconds(done)
    sys.__stdout__.write(f"\n{kind}: 2 nodes x 1 process {two_node_s:.1f} s (job start to completion), per step "
          f"{_step_seconds(out):.2f} s; 1 node x 2 processes {one_node_s:.1f} s (process wall), per step "
          f"{_step_seconds(single):.2f} s\n")      # the operator fixture captures sys.stdout
    two, one = _weights(out, steps), _weights(single, steps)
    assert two.keys() == one.keys()
    worst = max(float((two[k].float() - one[k].float()).abs().max()) for k in two)
    assert worst <= 1e-5, f"2 nodes x 1 process and 1 node x 2 processes differ by {worst}"
    initial, trained = _initial_weights(config), _loaded_weights(single / "checkpoints" / f"step-{steps:06d}" / "model")
    shared = [k for k in trained if k in initial and "visual" not in k]
    assert len(shared) > 10, sorted(trained)[:5]
    moved = max(float((trained[k].float() - initial[k].float()).abs().max()) for k in shared)
    assert moved > 1e-4, "training did not move the weights: the comparison would prove nothing"


def _seconds(status: dict) -> float:
    from datetime import datetime

    start, end = (datetime.fromisoformat(status[k].replace("Z", "+00:00")) for k in ("startTime", "completionTime"))
    return (end - start).total_seconds()


def _step_seconds(run_dir: Path) -> float:
    """Mean wall seconds per optimizer step from the run's metrics.jsonl (time/step_s or time/step)."""
    import json

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    values = [r.get("time/step_s", r.get("time/step")) for r in rows]
    values = [v for v in values if v is not None]
    return sum(values) / max(len(values), 1)


def _loaded_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from lvr_trainer.config import ModelConfig
    from lvr_trainer.model.loading import load_model

    model, _ = load_model(ModelConfig(path=str(model_dir)))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _initial_weights(config_text: str) -> dict[str, torch.Tensor]:
    from lvr_trainer.config import parse_config
    from lvr_trainer.model.loading import load_model

    model, _ = load_model(parse_config(yaml.safe_load(config_text), "trainer.yaml").model)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_worker_killed_mid_step_fails_the_gang_fast_naming_it_and_it_resumes_from_its_checkpoint(
        op, crds, kube_cluster, kube_namespace, k8s_client, synth_data, tmp_path):
    """No hung jobs: SIGKILL one worker pod's trainer of a 2-node SFTJob mid-run. The other rank's collective
    fails at once (not after parallel.timeout_s) with a message naming the lost rank by its pod, the gang
    restarts from its latest checkpoint (a charged restart: the pod crashed, nobody asked it to stop), and the
    job succeeds."""
    import json
    import re
    import signal as sig

    from lvr_localcluster.procs import process_tree
    from lvr_localcluster.pytest_plugin import wait_until

    ns, api, core = kube_namespace, crds, client.CoreV1Api(k8s_client)
    _ready_synth_dataset(api, ns, synth_data, tmp_path)
    out = tmp_path / "run"
    trainer = {"train": {"steps": 160, "batch_size": 1, "save_every": 20, "log_every": 1, "torch_threads": 1},
               "parallel": {"strategy": "ddp", "timeout_s": 300}}
    spec = _job("SFTJob", "killed", out, trainer)
    spec["runPolicy"] = {"backoffLimit": 2, "backoffSeconds": 1}
    create(api, ns, "sftjobs", "SFTJob", "killed", spec)

    def logged_step() -> int:
        log = out / "metrics.jsonl"
        lines = log.read_text().splitlines() if log.is_file() else []
        return json.loads(lines[-1])["step"] if lines else 0
    wait_until(lambda: logged_step() >= 30, 300, "the run past step 30", interval=0.5)
    pods = {p.metadata.labels.get("longvideo.dev/node-rank"): p for p in core.list_namespaced_pod(ns).items}
    victim, survivor = pods["1"], pods["0"]
    status = next(c for c in victim.status.container_statuses if c.name == "trainer")
    t0 = time.monotonic()
    for pid in process_tree(int(status.container_id.removeprefix("local://"))):
        os.kill(pid, sig.SIGKILL)
    restarted = wait_until(lambda: (s := api.get_namespaced_custom_object(G, V, ns, "sftjobs", "killed")
                                    .get("status") or {}).get("restarts") == 1 and s, 120, "the gang restart",
                           interval=0.5)
    noticed = time.monotonic() - t0
    assert noticed < 60, f"the failure took {noticed:.0f} s to reach the job (parallel.timeout_s is 300)"
    # the surviving rank's own words (its pod of attempt 0): the lost peer named, not a 300 s timeout
    pod_dir = kube_cluster.state_dir / "pods" / ns / f"{survivor.metadata.name}.{survivor.metadata.uid[:8]}"
    survivor_log = wait_until(lambda: "lost another rank" in (t := (pod_dir / "logs" / "trainer.log").read_text(
        errors="replace")) and t, 60, "the surviving rank's error")
    assert "the lost peer is rank 1 (on killed-sft-worker-1)" in survivor_log, survivor_log[-3000:]
    done = wait_phase(api, ns, "sftjobs", "killed", "Succeeded", 400)
    assert done["restarts"] == 1 and not done.get("preemptions"), done
    latest = max(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*"))
    assert latest == 160
    rank0 = next(p for p in core.list_namespaced_pod(ns).items if p.metadata.labels.get("longvideo.dev/node-rank") == "0")
    resumed = re.search(r"sft: steps (\d+)->160", kube_cluster.pod_log(ns, rank0.metadata.name, "trainer"))
    assert resumed and int(resumed.group(1)) % 20 == 0 and int(resumed.group(1)) >= 20, restarted
