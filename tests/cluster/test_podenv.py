"""The kubelet stand-in's pure parts: env resolution, $(VAR) expansion, path rewriting, pod phase."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import pytest

from lvr_localcluster.podenv import ContainerConfigError, container_argv, container_env, expand, rewrite_paths
from lvr_localcluster.podstatus import ContainerRecord, pod_phase, terminated_state
from lvr_localcluster.podvolumes import container_mounts, materialise_volumes

POD = {"metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "x"}},
       "spec": {"nodeName": "gpu-node-0", "containers": []}}
OBJECTS = {("secrets", "ns", "s"): {"data": {"k": base64.b64encode(b"v").decode()}},
           ("configmaps", "ns", "c"): {"data": {"a": "1", "f.yaml": "x: 1"}}}


def lookup(kind, namespace, name):
    return OBJECTS.get((kind, namespace, name))


def test_expand_follows_kubernetes_rules():
    assert expand("$(A)-$(B)-$$(A)", {"A": "1"}) == "1-$(B)-$(A)"


def test_env_sources_in_order():
    container = {"envFrom": [{"configMapRef": {"name": "c"}, "prefix": "C_"}],
                 "env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                         {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                         {"name": "BOTH", "value": "$(S)$(C_a)"},
                         {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "no", "key": "k", "optional": True}}}]}
    env = container_env(POD, container, lookup, {"BASE": "b"})
    assert env == {"BASE": "b", "C_a": "1", "C_f.yaml": "x: 1", "S": "v", "APP": "x", "BOTH": "v1"}


def test_missing_secret_is_a_config_error_naming_it():
    container = {"env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}]}
    with pytest.raises(ContainerConfigError, match="secret ns/gone not found") as err:
        container_env(POD, container, lookup, {})
    assert err.value.reason == "CreateContainerConfigError"


def test_paths_rewritten_only_at_boundaries():
    mounts = [("/data/cache", "/L/cache"), ("/data", "/L/data")]
    assert rewrite_paths("--in=/data/x --c /data/cache/y /database '/data'", mounts) == \
        "--in=/L/data/x --c /L/cache/y /database '/L/data'"


def test_command_resolves_to_venv_and_unknown_image_is_explained():
    venv_bin = Path(sys.executable).parent
    argv = container_argv({"name": "m", "command": ["/opt/conda/bin/python", "-c", "$(X)"]}, {"X": "pass"}, venv_bin)
    assert argv == [str(venv_bin / "python"), "-c", "pass"]
    with pytest.raises(ContainerConfigError, match="no known entry point"):
        container_argv({"name": "m", "image": "nginx:1"}, {}, venv_bin)


def test_volumes_materialised(tmp_path):
    pod = {**POD, "spec": {"volumes": [
        {"name": "cfg", "configMap": {"name": "c", "items": [{"key": "f.yaml", "path": "conf/f.yaml"}]}},
        {"name": "sec", "secret": {"secretName": "s"}}, {"name": "tmp", "emptyDir": {}},
        {"name": "meta", "downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}}]}}
    volumes = materialise_volumes(pod, tmp_path, lookup)
    assert (volumes["cfg"] / "conf/f.yaml").read_text() == "x: 1"
    assert (volumes["sec"] / "k").read_text() == "v"
    assert (volumes["meta"] / "name").read_text() == "p" and volumes["tmp"].is_dir()
    mounts = container_mounts({"volumeMounts": [{"name": "cfg", "mountPath": "/etc/c"},
                                                {"name": "sec", "mountPath": "/etc/c/s"}]}, volumes)
    assert [m[0] for m in mounts] == ["/etc/c/s", "/etc/c"]


def test_pod_phase_rules():
    done0 = ContainerRecord("a", "i", state=terminated_state(0, "t"), done=True, ever_started=True)
    done3 = ContainerRecord("b", "i", state=terminated_state(3, "t"), done=True, ever_started=True)
    running = ContainerRecord("c", "i", state={"running": {}}, ever_started=True)
    assert pod_phase([], [done0]) == "Succeeded"
    assert pod_phase([], [done0, done3]) == "Failed"
    assert pod_phase([], [done0, running]) == "Running"
    assert pod_phase([running], [ContainerRecord("m", "i")]) == "Pending"
    assert terminated_state(-9, "t")["terminated"]["exitCode"] == 137
