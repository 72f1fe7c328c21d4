"""`make cluster-up` / `cluster-down` path: a background cluster in its own state dir, then nothing left."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from .helpers import pid_alive

pytestmark = pytest.mark.cluster


def _cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lvr_localcluster", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_up_get_nodes_down_leaves_nothing(tmp_path):
    state = tmp_path / "cluster"
    up = _cli("up", "--dir", str(state))
    assert up.returncode == 0, up.stdout + up.stderr
    info = json.loads((state / "serve.json").read_text())
    try:
        assert f"kubeconfig: {info['kubeconfig']}" in up.stdout
        pgids = [int(p.read_text().split()[0]) for p in (state / "pids").glob("*.pid")]
        assert len(pgids) == 4  # etcd, apiserver, scheduler, controller-manager
        if shutil.which("kubectl"):
            nodes = subprocess.run(["kubectl", "--kubeconfig", info["kubeconfig"], "get", "nodes", "-o", "name"],
                                   capture_output=True, text=True, timeout=60)
            assert nodes.stdout.split() == ["node/cpu-node-0", "node/gpu-node-0"], nodes.stderr
        assert _cli("up", "--dir", str(state)).returncode == 0  # idempotent: reports the running one
    finally:
        down = _cli("down", "--dir", str(state))
    assert down.returncode == 0, down.stderr
    assert not pid_alive(info["pid"])
    assert not any(pid_alive(p) for p in pgids)
    assert _cli("status", "--dir", str(state)).returncode == 1
