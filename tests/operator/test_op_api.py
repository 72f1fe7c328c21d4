"""API models: defaults, bounds, aliases, the phase machine, and the examples."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from lvr_operator.api import (JobPhase, LongVideoDatasetSpec, ModelSource, RLJobSpec, SFTJobSpec,
                              check_transition, is_terminal, kind_by_name)
from lvr_operator.api.phases import JOB_TRANSITIONS
from lvr_operator.manifests.trainer_config import build_trainer_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "k8s"
BASE = {"datasetRef": {"name": "d"}, "model": {"uri": "s3://m"}, "output": {"uri": "s3://o"}}


def test_defaults_are_an_8_gpu_node_with_gpu_toleration():
    spec = RLJobSpec.model_validate(BASE)
    assert (spec.resources.nodes, spec.resources.gpus_per_node) == (1, 8)
    assert spec.placement.effective_node_selector() == {"nvidia.com/gpu.present": "true"}
    assert spec.placement.effective_tolerations()[0]["key"] == "nvidia.com/gpu"
    assert spec.run_policy.backoff_limit == 3 and spec.run_policy.suspend is False
    assert spec.rollout.engine == "transformers" and spec.rollout.mode == "inprocess"
    assert spec.rollout.gpu_memory_utilization == 0.5


@pytest.mark.parametrize("patch", [{"resources": {"gpusPerNode": 9}}, {"resources": {"nodes": 0}},
                                   {"frames": 0}, {"runPolicy": {"backoffLimit": -1}},
                                   {"rollout": {"gpuMemoryUtilization": 1.5}}, {"rollout": {"engine": "tgi"}}])
def test_bounds_and_enums_rejected(patch):
    with pytest.raises(ValidationError):
        RLJobSpec.model_validate({**BASE, **patch})


def test_model_source_needs_exactly_one():
    with pytest.raises(ValidationError, match="exactly one"):
        ModelSource.model_validate({"uri": "s3://a", "fromSFTJob": "b"})
    with pytest.raises(ValidationError, match="exactly one"):
        ModelSource.model_validate({"uri": "s3://a", "preset": "tiny"})
    with pytest.raises(ValidationError, match="exactly one"):
        ModelSource.model_validate({})
    assert ModelSource.model_validate({"fromSFTJob": "b"}).from_sft_job == "b"
    assert ModelSource.model_validate({"preset": "tiny"}).preset == "tiny"


def test_sftjob_has_no_rollout():
    with pytest.raises(ValidationError):
        SFTJobSpec.model_validate({**BASE, "rollout": {}})


def test_every_field_is_documented():
    for kind in ("RLJob", "SFTJob", "LongVideoDataset"):
        k = kind_by_name(kind)
        for model in (k.spec_model, k.status_model):
            for name, field in model.model_fields.items():
                assert field.description, f"{model.__name__}.{name} has no description"


def test_terminal_phases_and_transitions():
    assert is_terminal(JobPhase.succeeded) and is_terminal("Failed") and not is_terminal("Running")
    assert not JOB_TRANSITIONS[JobPhase.succeeded] and not JOB_TRANSITIONS[JobPhase.failed]
    assert check_transition(JobPhase.running, JobPhase.restarting)
    assert not check_transition(JobPhase.succeeded, JobPhase.running)
    for phase in JobPhase:       # every non-terminal phase can fail or be suspended
        if not is_terminal(phase):
            assert check_transition(phase, JobPhase.failed) and check_transition(phase, JobPhase.suspended)


def test_examples_validate_and_build_trainer_configs():
    docs = {p.stem: yaml.safe_load(p.read_text()) for p in EXAMPLES.glob("*.yaml")}
    assert {"dataset", "sftjob", "rljob"} <= set(docs)
    ds = LongVideoDatasetSpec.model_validate(docs["dataset"]["spec"])
    built = LongVideoDatasetSpec.model_validate(docs["dataset-build"]["spec"])
    assert built.source.build is not None and built.source.build.api_key_secret.key == "apiKey"
    for name in ("sftjob", "rljob"):
        doc = docs[name]
        assert doc["apiVersion"] == "longvideo.dev/v1alpha1"
        spec = kind_by_name(doc["kind"]).spec_model.model_validate(doc["spec"])
        cfg = build_trainer_config(spec, ds, "s3://models/x", name)
        assert cfg.data.sampling.num_frames == 512 and cfg.output.dir == doc["spec"]["output"]["uri"]


def test_a_vllm_sidecar_without_gpus_on_a_gpu_pod_is_refused_with_what_to_change():
    rollout = {"mode": "sidecar", "engine": "vllm", "gpus": 0}
    with pytest.raises(ValidationError, match=r"rollout.gpus: 0` leaves the vLLM rollout sidecar no GPU.*"
                                              r"rollout.engine: transformers"):
        RLJobSpec.model_validate({**BASE, "rollout": rollout})
    RLJobSpec.model_validate({**BASE, "rollout": rollout, "resources": {"gpusPerNode": 0}})   # CPU pods (tests)
    RLJobSpec.model_validate({**BASE, "rollout": {**rollout, "engine": "transformers"}})


def test_the_operator_marks_a_gpu_less_vllm_sidecar_invalid_spec():
    from op_helpers import job, observed, run

    plan = run(job(rollout={"mode": "sidecar", "engine": "vllm", "gpus": 0}), observed())
    assert plan.actions == [] and plan.status["phase"] == "Failed" and "no GPU" in plan.invalid
