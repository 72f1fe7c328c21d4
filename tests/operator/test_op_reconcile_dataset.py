"""reconcile_dataset: preprocessing pod lifecycle, counts from reports, retries, spec changes."""

from __future__ import annotations

import copy
import json

from lvr_operator.reconcile.dataset import DatasetObserved, reconcile_dataset
from lvr_operator.reconcile.model import Create, Delete
from op_helpers import NOW, SETTINGS, dataset, with_status

REPORT = json.dumps({"path": "train.jsonl", "rows": 10, "valid": 9, "invalid": 1, "error_rate": 0.1})


def _ds(**spec):
    obj = dataset(phase=None)
    obj["spec"].update({"encoder": {"preset": "tiny"}, **spec})
    return obj


def _run(obj, *pods, logs=None):
    return reconcile_dataset(obj, DatasetObserved(NOW, list(pods), logs or {}), SETTINGS)


def _pod(plan):
    return next(a.obj for a in plan.actions if isinstance(a, Create))


def _state(pod, validate, encode=None):
    pod = copy.deepcopy(pod)
    pod["status"] = {"phase": "Pending" if encode is None else "Running",
                     "initContainerStatuses": [{"name": "validate", "state": validate}],
                     "containerStatuses": [{"name": "encode", "state": encode or {"waiting": {}}}]}
    return pod


def _done(code, msg=""):
    return {"terminated": {"exitCode": code, "message": msg}}


def test_lifecycle_validating_caching_ready_with_counts():
    obj = _ds()
    plan = _run(obj)
    pod = _pod(plan)
    assert pod["metadata"]["name"] == "ds-prep-g1-0" and plan.status["phase"] == "Validating"
    obj = with_status(obj, plan.status)
    plan = _run(obj, _state(pod, {"running": {}}))
    assert plan.status["phase"] == "Validating" and plan.actions == []
    plan = _run(obj, _state(pod, _done(0, REPORT), {"running": {}}))
    assert plan.status["phase"] == "Caching" and plan.status["rows"] == {"total": 10, "valid": 9, "invalid": 1}
    obj = with_status(obj, plan.status)
    enc = json.dumps({"videos": 5, "encoded": 3, "hits": 1, "failed": 1, "bytes_written": 768, "bytes_read": 256,
                      "cache": "s3://cache/embeddings", "max_error_rate": 0.25,
                      "failed_videos": [{"video": "s3://data/v/bad.mp4", "error": "not a video"}]})  # `lvr encode --json`
    plan = _run(obj, _state(pod, _done(0, REPORT), _done(0, enc)))
    assert plan.status["phase"] == "Ready" and plan.status["cachedVideos"] == 4 and plan.status["cachedBytes"] == 1024
    assert plan.status["failedVideos"] == 1 and plan.status["failedVideoExamples"] == ["s3://data/v/bad.mp4: not a video"]
    assert "1 videos failed to encode and were skipped" in plan.status["message"]
    assert plan.events[-1].reason == "DatasetReady" and "9 valid rows of 10" in plan.status["message"]
    assert _run(with_status(obj, plan.status)).actions == []                  # Ready stays Ready


def test_encode_gets_the_datasets_pixels_and_error_rate():
    pod = _pod(_run(_ds(maxPixels=3136, maxErrorRate=0.05, source={"jsonl": "s3://d/t.jsonl", "videos": "s3://v/"})))
    encode = pod["spec"]["containers"][0]["command"]
    assert encode[encode.index("--max-pixels") + 1] == "3136" and encode[encode.index("--max-error-rate") + 1] == "0.05"
    validate = pod["spec"]["initContainers"][0]["command"]
    assert validate[validate.index("--video-root") + 1] == "s3://v/" and "--video-root" in encode


def test_a_pod_that_cannot_start_is_named_with_the_kubelets_reason():
    obj = _ds()
    plan = _run(obj)
    pod, obj = _pod(plan), with_status(obj, plan.status)
    waiting = {"waiting": {"reason": "CreateContainerConfigError", "message": "secret ns/missing not found"}}
    plan = _run(obj, _state(pod, waiting))
    assert plan.status["phase"] == "Validating"
    assert "container validate: CreateContainerConfigError: secret ns/missing not found" in plan.status["message"]
    assert plan.status["message"].startswith("pod ds-prep-g1-0")


def test_failed_validation_retries_then_fails_with_hint():
    obj = _ds(backoffLimit=1)
    pod = _pod(_run(obj))
    plan = _run(obj, _state(pod, _done(1, REPORT)))
    retry = _pod(plan)
    assert retry["metadata"]["name"] == "ds-prep-g1-1" and plan.status["attempts"] == 2
    obj = with_status(obj, plan.status)
    plan = _run(obj, _state(pod, _done(1, REPORT)), _state(retry, _done(1, "")), logs={"ds-prep-g1-1": "bad row 7"})
    assert plan.status["phase"] == "Failed" and plan.events[-1].type == "Warning"
    msg = plan.status["message"]
    assert "step `validate`" in msg and "code 1" in msg and "maxErrorRate" in msg and "bad row 7" in msg


def test_spec_change_reruns_preprocessing_and_deletes_old_pods():
    obj = _ds()
    pod = _pod(_run(obj))
    ready = with_status(obj, {"phase": "Ready", "observedGeneration": 1, "conditions": []})
    ready["metadata"]["generation"] = 2
    plan = _run(ready, _state(pod, _done(0, REPORT), _done(0, "{}")))
    assert Delete("Pod", "ds-prep-g1-0") in plan.actions
    assert _pod(plan)["metadata"]["name"] == "ds-prep-g2-0" and plan.status["phase"] == "Validating"


def test_invalid_dataset_spec():
    obj = _ds(frames=0)
    plan = _run(obj)
    assert plan.status["phase"] == "Failed" and plan.invalid and "spec.frames" in plan.invalid
    obj = _ds(sourc={"jsonl": "x"})
    assert "did you mean 'source'" in _run(obj).invalid


BUILD = {"videos": "s3://raw/videos/", "captioner": {"url": "http://vlm:8000/v1", "model": "qwen-vl"},
         "reasoner": {"url": "http://llm:8000/v1"}, "apiKeySecret": {"name": "endpoints"}, "clipSeconds": 8}


def test_a_build_source_runs_build_then_validate_then_encode():
    obj = _ds(source={"jsonl": "s3://data/built/train.jsonl", "build": BUILD})
    plan = _run(obj)
    pod = _pod(plan)
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["build", "validate"]
    assert [c["name"] for c in pod["spec"]["containers"]] == ["encode"] and plan.status["phase"] == "Building"
    build = pod["spec"]["initContainers"][0]
    cmd = build["command"]
    assert cmd[cmd.index("lvr"):cmd.index("lvr") + 3] == ["lvr", "data", "build"]
    assert cmd[cmd.index("--out") + 1] == "s3://data/built" and cmd[cmd.index("--videos") + 1] == "s3://raw/videos/"
    assert cmd[cmd.index("--captioner-model") + 1] == "qwen-vl" and "--reasoner-model" not in cmd
    assert cmd[cmd.index("--clip-seconds") + 1] == "8" and "--json" in cmd
    key = next(e for e in build["env"] if e["name"] == "LVR_BUILD_API_KEY")
    assert key["valueFrom"] == {"secretKeyRef": {"name": "endpoints", "key": "apiKey"}}
    assert all("secretKeyRef" not in str(e) or e["name"] != "LVR_BUILD_API_KEY"
               for c in pod["spec"]["initContainers"][1:] + pod["spec"]["containers"] for e in c["env"])


def test_build_counts_reach_the_status_and_a_failed_build_says_what_to_check():
    obj = _ds(source={"jsonl": "s3://data/built/train.jsonl", "build": BUILD}, backoffLimit=0)
    plan = _run(obj)
    pod, obj = _pod(plan), with_status(obj, plan.status)
    report = json.dumps({"videos": 3, "skipped": 1, "clips": 4, "questions": 24, "kept": 17,
                         "dropped": {"blind": 5, "duplicate": 2}, "calls": 40})
    done = copy.deepcopy(pod)
    done["status"] = {"phase": "Running", "initContainerStatuses": [
        {"name": "build", "state": _done(0, report)}, {"name": "validate", "state": {"running": {}}}],
        "containerStatuses": [{"name": "encode", "state": {"waiting": {}}}]}
    plan = _run(obj, done)
    assert plan.status["phase"] == "Validating"
    assert plan.status["built"] == {"videos": 3, "skipped": 1, "clips": 4, "questions": 24, "kept": 17,
                                    "dropped": {"blind": 5, "duplicate": 2}, "calls": 40}
    failed = copy.deepcopy(pod)
    failed["status"] = {"phase": "Failed", "initContainerStatuses": [{"name": "build", "state": _done(2, "")}]}
    plan = _run(obj, failed)
    assert plan.status["phase"] == "Failed" and "BuildFailed" == plan.events[-1].reason
    assert "spec.source.build's endpoints and API key Secret" in plan.status["message"]


def test_a_build_needs_an_s3_train_jsonl_to_write():
    import pytest
    from pydantic import ValidationError

    from lvr_operator.api.dataset import LongVideoDatasetSpec

    with pytest.raises(ValidationError, match="must be s3://bucket/prefix/train.jsonl"):
        LongVideoDatasetSpec.model_validate({"source": {"jsonl": "/data/rows.jsonl", "build": BUILD}})
