"""Helpers of the operator's cluster suites: create custom resources, read their status, wait for a
phase, and the mock-trainer job spec (the CRD and operator fixtures live in conftest.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from lvr_localcluster.pytest_plugin import wait_until

CRDS = Path(__file__).resolve().parents[2] / "crds"
EXAMPLES_K8S = Path(__file__).resolve().parents[2] / "examples" / "k8s"
MOCK = str(Path(__file__).resolve().parent / "mock_trainer.py")
G, V = "longvideo.dev", "v1alpha1"
OWNER = "longvideo.dev/owner"
ROW = {"id": "q1", "video": "s3://videos/a.mp4", "question": "What happens first?", "answer": "A",
       "options": {"A": "red", "B": "blue", "C": "green", "D": "white"}, "category": "temporal", "duration": 60}


def create(api, ns: str, plural: str, kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return api.create_namespaced_custom_object(G, V, ns, plural, {"apiVersion": f"{G}/{V}", "kind": kind,
                                                                  "metadata": {"name": name}, "spec": spec})


def status(api, ns: str, plural: str, name: str) -> dict[str, Any]:
    return api.get_namespaced_custom_object(G, V, ns, plural, name).get("status") or {}


def wait_phase(api, ns: str, plural: str, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
    return wait_until(lambda: (s := status(api, ns, plural, name)).get("phase") == phase and s, timeout,
                      f"{plural}/{name} phase {phase}", interval=0.5)


def write_jsonl(tmp_path: Path) -> str:
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text(json.dumps(ROW) + "\n")
    return str(jsonl)


def dataset(api, ns: str, tmp_path: Path) -> dict[str, Any]:
    """LongVideoDataset `ds` (validate only, no GPU), waited on until the operator makes it Ready."""
    create(api, ns, "longvideodatasets", "LongVideoDataset", "ds",
           {"source": {"jsonl": write_jsonl(tmp_path)}, "frames": 8, "resources": {"gpusPerNode": 0}})
    return wait_phase(api, ns, "longvideodatasets", "ds", "Ready", 90)


def ready_dataset(api, ns: str, tmp_path: Path, name: str = "ds") -> None:
    """LongVideoDataset marked Ready by hand (for tests that drive reconciles without the operator)."""
    create(api, ns, "longvideodatasets", "LongVideoDataset", name,
           {"source": {"jsonl": write_jsonl(tmp_path)}, "frames": 8, "resources": {"gpusPerNode": 0}})
    api.patch_namespaced_custom_object_status(G, V, ns, "longvideodatasets", name,
                                              {"status": {"phase": "Ready", "observedGeneration": 1}})


def job_spec(**over: Any) -> dict[str, Any]:
    """An SFTJob/RLJob spec whose workers run mock_trainer.py (`args=[...]` are its arguments)."""
    mock = [sys.executable, MOCK, *over.pop("args", [])]
    spec = {"datasetRef": {"name": "ds"}, "model": {"uri": "s3://models/base"}, "command": mock,
            "trainer": {"train": {"steps": 3}}, "resources": {"nodes": 1, "gpusPerNode": 8},
            "output": {"uri": "s3://ckpt/job"}, "runPolicy": {"backoffLimit": 1, "backoffSeconds": 1}}
    spec.update(over)
    return spec


def owned_pods(core, ns: str, owner: str) -> list:
    return core.list_namespaced_pod(ns, label_selector=f"{OWNER}={owner}").items
