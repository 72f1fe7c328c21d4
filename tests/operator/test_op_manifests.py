"""Pure builders: every child object a job or dataset gets."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from lvr_trainer.config import ConfigError, TrainerConfig

from lvr_operator.api import LongVideoDatasetSpec, RLJobSpec, SFTJobSpec, kind_by_name
from lvr_operator.manifests.common import LABEL_ATTEMPT, LABEL_OWNER, worker_name
from lvr_operator.manifests.dataset import encode_argv, prep_pod, validate_argv
from lvr_operator.manifests.job import config_map, headless_service, launch_command, trainer_rbac
from lvr_operator.manifests.job_pod import worker_pod
from lvr_operator.manifests.rbac import operator_rules
from lvr_operator.manifests.trainer_config import build_trainer_config
from op_helpers import SETTINGS, dataset, job


def _spec(kind="RLJob", **over):
    obj = job(kind, **over)
    return obj, (RLJobSpec if kind == "RLJob" else SFTJobSpec).model_validate(obj["spec"])


DS = LongVideoDatasetSpec.model_validate(dataset()["spec"])


def _env(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_trainer_config_derived_from_spec_and_overridable():
    _, spec = _spec()
    cfg = build_trainer_config(spec, DS, "s3://models/base", "x")
    assert cfg.model.path == "s3://models/base" and cfg.data.train == "s3://data/train.jsonl"
    assert cfg.cache.uri == "s3://cache/embeddings" and cfg.output.dir == "s3://ckpt/r1"
    assert cfg.data.sampling.num_frames == 32 and cfg.train.steps == 100
    _, spec = _spec(trainer={"train": {"steps": 3}, "model": {"preset": "tiny"}})
    assert build_trainer_config(spec, DS, "s3://m", "x").model.preset == "tiny"


def test_trainer_config_rejects_unknown_key_with_hint_and_bad_sp():
    _, spec = _spec(trainer={"train": {"steps": 3}, "optim": {"lrr": 1e-5}})
    with pytest.raises(ConfigError, match=r"optim.lrr.*did you mean 'lr'"):
        build_trainer_config(spec, DS, "s3://m", "spec.trainer")
    _, spec = _spec(trainer={"train": {"steps": 3}, "parallel": {"sequence_parallel": 3}})
    with pytest.raises(ConfigError, match=r"3 does not divide the 16 processes.*1, 2, 4, 8, 16"):
        build_trainer_config(spec, DS, "s3://m", "spec.trainer")


def test_rollout_settings_have_one_place_spec_rollout():
    """The pods are built from spec.rollout: spec.trainer.rollout may tune the trainer's own rollout keys
    (max_model_len, timeouts, weight buckets) but not say a second time what spec.rollout says."""
    _, spec = _spec(rollout={"mode": "sidecar"}, trainer={"rollout": {"mode": "inprocess"}})
    with pytest.raises(ConfigError, match=r"rollout.mode.*set `spec.rollout.mode` instead"):
        build_trainer_config(spec, DS, "s3://m", "spec.trainer")
    _, spec = _spec(rollout={"mode": "sidecar"}, trainer={"rollout": {"max_model_len": 4096, "weight_bucket_mb": 64}})
    cfg = build_trainer_config(spec, DS, "s3://m", "spec.trainer")
    assert (cfg.rollout.mode.value, cfg.rollout.max_model_len, cfg.rollout.weight_bucket_mb) == ("sidecar", 4096, 64)


def test_config_map_round_trips_through_the_trainer_models():
    obj, spec = _spec()
    cm = config_map(obj, build_trainer_config(spec, DS, "s3://m", "x"))
    assert cm["metadata"]["name"] == "r1-rl-config"
    assert TrainerConfig.model_validate(yaml.safe_load(cm["data"]["trainer.yaml"])).train.steps == 100


def test_worker_pods_torchrun_rendezvous_gpus_shm_and_secret():
    obj, spec = _spec()
    pods = [worker_pod(obj, spec, r, 1, SETTINGS, "s3://ckpt/r1/step-50", DS.cache.s3) for r in (0, 1)]
    assert [p["metadata"]["name"] for p in pods] == ["r1-rl-worker-0", "r1-rl-worker-1"]
    p1 = pods[1]
    (trainer,) = p1["spec"]["containers"]     # in process by default: no rollout sidecar
    cmd = trainer["command"]
    assert cmd[0] == "torchrun" and "--nnodes=2" in cmd and "--nproc-per-node=8" in cmd and "--node-rank=1" in cmd
    assert "--master-addr=r1-rl-worker-0.r1-rl-workers.ns.svc" in cmd and cmd[-4:] == ["rl", "--config", "/etc/lvr/trainer.yaml", "--resume"]
    env = _env(trainer)
    assert env["LVR_NODE_RANK"] == "1" and env["MASTER_PORT"] == "29500" and env["LVR_RESUME_FROM"].endswith("step-50")
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3", "key": "accessKey"}}
    assert trainer["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}} in p1["spec"]["volumes"]
    assert p1["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert p1["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert p1["spec"]["restartPolicy"] == "Never" and p1["spec"]["subdomain"] == "r1-rl-workers"
    assert p1["metadata"]["labels"][LABEL_ATTEMPT] == "1" and p1["metadata"]["labels"][LABEL_OWNER] == "r1"
    assert p1["metadata"]["ownerReferences"][0] == {"apiVersion": "longvideo.dev/v1alpha1", "kind": "RLJob",
                                                   "name": "r1", "uid": "uid-job", "controller": True,
                                                   "blockOwnerDeletion": True}
    assert "ports" in pods[0]["spec"]["containers"][0] and "ports" not in trainer


def test_sft_pod_has_no_sidecar_and_command_override_and_cpu_mode():
    obj, spec = _spec("SFTJob", command=["python", "-c", "pass"], resources={"nodes": 1, "gpusPerNode": 0},
                      placement={"nodeSelector": {}})
    pod = worker_pod(obj, spec, 0, 0, SETTINGS)
    (trainer,) = pod["spec"]["containers"]
    assert trainer["command"] == ["python", "-c", "pass"] and "resources" not in trainer
    assert _env(trainer)["LVR_NPROC_PER_NODE"] == "1" and "nodeSelector" not in pod["spec"]


def test_one_pod_gang_rendezvouses_inside_its_pod():
    obj, spec = _spec(resources={"nodes": 1, "gpusPerNode": 8})
    cmd = worker_pod(obj, spec, 0, 0, SETTINGS)["spec"]["containers"][0]["command"]
    assert cmd[:4] == ["torchrun", "--standalone", "--nnodes=1", "--nproc-per-node=8"]
    assert not any(a.startswith("--master-addr") for a in cmd)


def test_headless_service_and_narrow_trainer_rbac():
    obj, _ = _spec()
    svc = headless_service(obj, SETTINGS)
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    sa, role, binding = trainer_rbac(obj, 2)
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"],
                              "resourceNames": [worker_name("RLJob", "r1", 0), worker_name("RLJob", "r1", 1)]}]
    assert binding["subjects"][0]["name"] == sa["metadata"]["name"] == "r1-rl-trainer"


def test_dataset_prep_pod_validate_then_encode():
    ds = dataset()
    ds["spec"]["encoder"] = {"preset": "tiny"}
    spec = LongVideoDatasetSpec.model_validate(ds["spec"])
    pod = prep_pod(ds, spec, "ds-prep-g1-0", 0, SETTINGS)
    (init,), (enc,) = pod["spec"]["initContainers"], pod["spec"]["containers"]
    assert init["command"][4:8] == ["lvr", "data", "validate", "s3://data/train.jsonl"]
    assert "--json" in init["command"] and enc["command"][4:6] == ["lvr", "encode"]
    assert "--cache" in enc["command"] and "s3://cache/embeddings" in enc["command"]
    assert _env(enc)["LVR_S3_ENDPOINT"] == "http://s3:9000"           # what lvr_trainer.storage.s3 reads
    assert enc["resources"]["limits"]["nvidia.com/gpu"] == 1 and pod["spec"]["automountServiceAccountToken"] is False
    no_enc = prep_pod(dataset(), LongVideoDatasetSpec.model_validate(dataset()["spec"]), "p", 0, SETTINGS)
    assert "initContainers" not in no_enc["spec"] and no_enc["spec"]["containers"][0]["name"] == "validate"


def test_operator_rbac_covers_what_the_trainer_role_grants():
    rules = operator_rules()
    pods = next(r for r in rules if "pods" in r["resources"])
    assert {"get", "patch", "create", "delete"} <= set(pods["verbs"])
    assert any("rljobs/status" in r["resources"] for r in rules)


def test_dataset_steps_parse_with_the_real_lvr_cli():
    """The preprocessing pod's argv is accepted by `lvr` itself, with the meaning the operator wants."""
    from lvr_trainer.cli import build_parser

    ds = dataset()
    ds["spec"].update({"encoder": {"model": "s3://models/qwen"}, "frames": 256, "maxErrorRate": 0.05})
    spec = LongVideoDatasetSpec.model_validate(ds["spec"])
    val = build_parser().parse_args(validate_argv(spec)[1:])
    assert (val.file, val.frames, val.max_error_rate, val.json) == ("s3://data/train.jsonl", 256, 0.05, True)
    enc = build_parser().parse_args(encode_argv(spec)[1:])
    assert (enc.data, enc.cache, enc.frames, enc.model, enc.json) == (
        "s3://data/train.jsonl", "s3://cache/embeddings", 256, "s3://models/qwen", True)
    ds["spec"]["encoder"] = {"preset": "tiny"}
    assert build_parser().parse_args(encode_argv(LongVideoDatasetSpec.model_validate(ds["spec"]))[1:]).preset == "tiny"


def test_trainer_command_parses_with_the_real_lvr_cli():
    from lvr_trainer.cli import build_parser

    for kind in ("SFTJob", "RLJob"):
        obj = job(kind)
        spec = kind_by_name(kind).spec_model.model_validate(obj["spec"])
        cmd = launch_command(obj, spec, 0, SETTINGS)
        args = build_parser().parse_args(cmd[cmd.index("lvr_trainer.cli") + 1:])
        assert (args.command, args.config, args.resume) == (kind[:-3].lower(), "/etc/lvr/trainer.yaml", True)


def _sidecar_pod(native: bool, **rollout):
    from dataclasses import replace

    obj, spec = _spec(rollout={"mode": "sidecar", **rollout})
    return spec, worker_pod(obj, spec, 0, 0, replace(SETTINGS, native_sidecars=native), None, DS.cache.s3)


@pytest.mark.parametrize("native", [True, False])
def test_rollout_sidecar_serves_the_jobs_model_on_its_own_gpus(native):
    from lvr_trainer.cli import build_parser

    spec, pod = _sidecar_pod(native, engine="vllm", tensorParallel=2)
    trainer = pod["spec"]["containers"][0]
    if native:   # Kubernetes >= 1.29: an init container that keeps running, started before the trainer
        (rollout,) = pod["spec"]["initContainers"]
        assert rollout["restartPolicy"] == "Always" and len(pod["spec"]["containers"]) == 1
    else:        # older servers: a second container, which the trainer shuts down when it ends
        assert "initContainers" not in pod["spec"]
        rollout = pod["spec"]["containers"][1]
    assert rollout["name"] == "rollout" and rollout["image"] == "rollout:test"
    args = build_parser().parse_args(rollout["command"][rollout["command"].index("lvr_trainer.cli") + 1:])
    assert (args.command, args.config, args.engine, args.port, args.host) == (
        "rollout-server", "/etc/lvr/trainer.yaml", "vllm", 8000, "127.0.0.1")
    # GPUs through the device plugin: 2 for vLLM (tensor parallel), the other 6 for 6 trainer ranks
    assert rollout["resources"]["limits"] == {"nvidia.com/gpu": 2}
    assert trainer["resources"]["limits"]["nvidia.com/gpu"] == 6 and _env(trainer)["LVR_NPROC_PER_NODE"] == "6"
    assert "--nproc-per-node=6" in trainer["command"]
    assert not any(e["name"] == "NVIDIA_VISIBLE_DEVICES" for c in (rollout, trainer) for e in c["env"])
    assert _env(rollout)["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3", "key": "accessKey"}}
    assert "/health" in " ".join(rollout["startupProbe"]["exec"]["command"])
    cfg = build_trainer_config(spec, DS, "s3://m", "x")
    assert cfg.rollout.sidecar_url == "http://127.0.0.1:8000" and cfg.rollout.tensor_parallel == 2
    assert cfg.rollout.engine.value == "vllm" and cfg.rollout.mode.value == "sidecar"


def test_transformers_sidecar_uses_the_trainer_image_and_cpu_pods_share_nothing():
    _, pod = _sidecar_pod(False, port=8123)
    rollout = pod["spec"]["containers"][1]
    assert rollout["image"] == "trainer:test" and "--port" in rollout["command"] and "8123" in rollout["command"]
    obj, spec = _spec(rollout={"mode": "sidecar"}, resources={"nodes": 1, "gpusPerNode": 0})
    rollout = worker_pod(obj, spec, 0, 0, SETTINGS)["spec"]["containers"][1]
    assert "resources" not in rollout


def test_the_sidecar_gets_its_memory_and_a_drain_that_ends_within_the_grace_period():
    spec, pod = _sidecar_pod(False, engine="vllm", memory="40Gi")
    rollout = pod["spec"]["containers"][1]
    assert rollout["resources"]["requests"] == rollout["resources"]["limits"] == {"nvidia.com/gpu": 1,
                                                                                 "memory": "40Gi"}
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    cmd = rollout["command"]
    assert "--drain-on-sigterm" in cmd and 0 < float(cmd[cmd.index("--drain-timeout-s") + 1]) < grace
    _, native = _sidecar_pod(True, engine="vllm")
    assert "--drain-on-sigterm" not in native["spec"]["initContainers"][0]["command"]   # the kubelet orders it


@pytest.mark.parametrize("rollout, resources, message", [
    ({"mode": "sidecar", "gpus": 4}, {"gpusPerNode": 4}, "leaves no GPU of `resources.gpusPerNode` \\(4\\)"),
    ({"mode": "sidecar", "engine": "vllm", "tensorParallel": 4, "gpus": 2}, None, "fewer than `rollout.tensorParallel`"),
    ({"gpus": 2}, None, "`rollout.gpus` applies to the rollout sidecar only"),
    ({"mode": "sidecar", "tensorParallel": 2}, None, "needs `rollout.engine: vllm`"),
    ({"memory": "8Gi"}, None, "`rollout.memory` applies to the rollout sidecar only"),
    ({"mode": "sidecar"}, {"memory": "900Gi"}, "needs its own `rollout.memory`"),
])
def test_rollout_specs_that_cannot_run_are_refused_naming_the_field(rollout, resources, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        _spec(rollout=rollout, **({"resources": resources} if resources else {}))


def test_native_sidecars_from_the_api_servers_version():
    from lvr_operator.cluster import native_sidecars_in

    assert native_sidecars_in({"major": "1", "minor": "29"}) and native_sidecars_in({"major": "1", "minor": "33+"})
    assert not native_sidecars_in({"major": "1", "minor": "20"}) and not native_sidecars_in({"major": "x"})


@pytest.mark.parametrize("native", [True, False])
def test_trainer_and_preparation_pods_meet_pod_security_restricted(native):
    obj, spec = _spec(rollout={"mode": "sidecar", "engine": "vllm", "gpus": 2})
    settings = dataclasses.replace(SETTINGS, native_sidecars=native)
    pods = [worker_pod(obj, spec, 0, 0, settings, None, DS.cache.s3),
            prep_pod(dataset(), DS.model_copy(update={"build": None}), "ds-prep-g1-0", 0, SETTINGS)]
    for pod in pods:
        ps = pod["spec"]
        assert ps["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
        containers = ps.get("initContainers", []) + ps["containers"]
        assert containers and all(c["securityContext"] == {"allowPrivilegeEscalation": False,
                                                           "capabilities": {"drop": ["ALL"]}} for c in containers)
        assert not any(c["securityContext"].get("privileged") or c["securityContext"].get("runAsUser") == 0
                       for c in containers)
    worker, prep = pods
    assert worker["spec"]["automountServiceAccountToken"] is True        # rank 0 patches its own pod
    assert prep["spec"]["automountServiceAccountToken"] is False         # the preparation steps never call the API


def test_operator_rbac_covers_every_call_on_children():
    """cluster.py creates, lists and deletes children, reads one that already exists (whose controller it
    checks) and replaces a new gang's ConfigMap: the chart's rules grant each of those calls."""
    from lvr_operator.manifests.common import PODGROUP_PLURAL

    def allowed(resource, verb):
        return any(resource in r["resources"] and verb in r["verbs"] for r in operator_rules())
    for resource in ("pods", "configmaps", "services", "serviceaccounts", "roles", "rolebindings"):
        assert all(allowed(resource, verb) for verb in ("get", "list", "create", "delete")), resource
    assert allowed("configmaps", "update") and allowed(PODGROUP_PLURAL, "get")
