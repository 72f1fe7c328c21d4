"""Builders of custom resources and pod states for the operator's pure tests (no cluster)."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from typing import Any

from lvr_operator.manifests.common import ANNOTATION_PROGRESS
from lvr_operator.reconcile.job import JobObserved, reconcile_job
from lvr_operator.settings import OperatorSettings

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=timezone.utc)
SETTINGS = OperatorSettings(trainer_image="trainer:test", rollout_image="rollout:test", resync_seconds=10)


def dataset(phase: str | None = "Ready", name: str = "ds") -> dict[str, Any]:
    obj = {"apiVersion": "longvideo.dev/v1alpha1", "kind": "LongVideoDataset",
           "metadata": {"name": name, "namespace": "ns", "uid": "uid-ds", "generation": 1},
           "spec": {"source": {"jsonl": "s3://data/train.jsonl"}, "frames": 32,
                    "cache": {"s3": {"endpoint": "http://s3:9000", "bucket": "cache", "credentialsSecret": "s3"}}}}
    if phase:
        obj["status"] = {"phase": phase}
    return obj


def job(kind: str = "RLJob", name: str = "r1", **spec_over: Any) -> dict[str, Any]:
    spec = {"datasetRef": {"name": "ds"}, "model": {"uri": "s3://models/base"},
            "trainer": {"train": {"steps": 100}, "parallel": {"sequence_parallel": 4}},
            "resources": {"nodes": 2, "gpusPerNode": 8}, "output": {"uri": "s3://ckpt/r1"},
            "runPolicy": {"backoffLimit": 2, "backoffSeconds": 10}}
    spec.update(spec_over)
    return {"apiVersion": "longvideo.dev/v1alpha1", "kind": kind,
            "metadata": {"name": name, "namespace": "ns", "uid": "uid-job", "generation": 1}, "spec": spec}


ALL_CHILDREN = {("ConfigMap", "r1-rl-config"), ("Service", "r1-rl-workers"), ("ServiceAccount", "r1-rl-trainer"),
                ("Role", "r1-rl-trainer"), ("RoleBinding", "r1-rl-trainer")}


def observed(*pods: dict, dataset_obj: Any = "default", now: datetime = NOW, **kw: Any) -> JobObserved:
    ds = dataset() if dataset_obj == "default" else dataset_obj
    children = kw.pop("children", ALL_CHILDREN if pods else set())
    return JobObserved(now=now, pods=list(pods), children=children, dataset=ds, **kw)


def pod_in(pod: dict[str, Any], state: str, exit_code: int = 0, message: str = "",
           progress: dict | None = None) -> dict[str, Any]:
    """A copy of a built pod in a state: pending | running | succeeded | failed."""
    pod = copy.deepcopy(pod)
    names = [c["name"] for c in pod["spec"]["containers"]]
    st: dict[str, Any]
    if state == "pending":
        st, phase = {"waiting": {"reason": "ContainerCreating"}}, "Pending"
    elif state == "running":
        st, phase = {"running": {"startedAt": "2026-11-24T11:00:00Z"}}, "Running"
    else:
        code = 0 if state == "succeeded" else exit_code
        st = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "message": message}}
        phase = "Succeeded" if code == 0 else "Failed"
    pod["status"] = {"phase": phase, "containerStatuses": [{"name": n, "state": st} for n in names]}
    if progress is not None:
        pod["metadata"].setdefault("annotations", {})[ANNOTATION_PROGRESS] = json.dumps(progress)
    return pod


def run(obj: dict[str, Any], obs: JobObserved):
    return reconcile_job(obj, obs, SETTINGS)


def created_pods(plan) -> list[dict[str, Any]]:
    return [a.obj for a in plan.actions if getattr(a, "obj", {}).get("kind") == "Pod"]


def with_status(obj: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj["status"] = copy.deepcopy(status)
    return obj


def later(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)
