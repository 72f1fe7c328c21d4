"""`make cluster-up` / `cluster-down` path: a background cluster in its own state dir, then nothing left."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lvr_localcluster.ports import free_port
from lvr_localcluster.pytest_plugin import wait_until

from .helpers import pid_alive

pytestmark = pytest.mark.cluster


def _cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    # a free S3 port: the default 9000 may belong to a developer's own `make cluster-up` (or `make demo`)
    env = {**os.environ, "LVR_S3_PORT": str(free_port())}
    return subprocess.run([sys.executable, "-m", "lvr_localcluster", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_up_get_nodes_down_leaves_nothing(tmp_path):
    state = tmp_path / "cluster"
    up = _cli("up", "--dir", str(state))
    assert up.returncode == 0, up.stdout + up.stderr
    info = json.loads((state / "serve.json").read_text())
    try:
        assert f"kubeconfig: {info['kubeconfig']}" in up.stdout
        pgids = [int(p.read_text().split()[0]) for p in (state / "pids").glob("*.pid")]
        assert len(pgids) == 5  # etcd, apiserver, scheduler, controller-manager, moto_server
        assert info["s3"]["bucket"] == "lvr" and "s3: http://127.0.0.1:" in up.stdout
        if shutil.which("kubectl"):
            nodes = subprocess.run(["kubectl", "--kubeconfig", info["kubeconfig"], "get", "nodes", "-o", "name"],
                                   capture_output=True, text=True, timeout=60)
            assert nodes.stdout.split() == ["node/cpu-node-0", "node/gpu-node-0", "node/gpu-node-1"], nodes.stderr
        assert _cli("up", "--dir", str(state)).returncode == 0  # idempotent: reports the running one
    finally:
        down = _cli("down", "--dir", str(state))
    assert down.returncode == 0, down.stderr
    assert not pid_alive(info["pid"])
    assert not any(pid_alive(p) for p in pgids)
    assert _cli("status", "--dir", str(state)).returncode == 1


CRASHING_OWNER = """
import sys, time
from lvr_localcluster.cluster import LocalCluster
c = LocalCluster(sys.argv[1]).start()
c.api.create('/api/v1/namespaces/default/pods', {'metadata': {'name': 's'}, 'spec': {'containers': [
    {'name': 'm', 'image': 'x', 'command': ['sh', '-c', 'sleep 500 & sleep 600']}]}})
while c.api.get('/api/v1/namespaces/default/pods/s').get('status', {}).get('phase') != 'Running':
    time.sleep(0.2)
print('running', flush=True)
time.sleep(600)
"""


def test_owner_killed_with_sigkill_leaves_nothing(tmp_path):
    """A test process killed -9 mid-run: the reaper must still end the control plane and the pod's
    whole process group (the `sleep` grandchildren too, which PR_SET_PDEATHSIG alone would miss)."""
    state = tmp_path / "crash"
    owner = subprocess.Popen([sys.executable, "-c", CRASHING_OWNER, str(state)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "running"
        pgids = [int(p.read_text().split()[0]) for p in (state / "pids").glob("*.pid")]
        assert len(pgids) == 5 and all(pid_alive(p) for p in pgids)
        members = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and _pgid(d) in pgids]
    finally:
        owner.kill()
        owner.wait()
    wait_until(lambda: not any(pid_alive(p) for p in members), 15, "every cluster process to end")


def _pgid(proc_dir: Path) -> int:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError):
        return -1
