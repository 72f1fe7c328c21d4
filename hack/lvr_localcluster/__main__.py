"""`python -m lvr_localcluster up|down|status|serve|build` — the local cluster from a shell (make cluster-up).

`up` starts `serve` as a background daemon (its own session, so it survives the shell), waits until the
cluster is ready and prints the kubeconfig path. `down` asks the daemon to stop (SIGTERM), then ends any
process group still recorded in <dir>/pids. State lives in LVR_CLUSTER_DIR (default: <repo>/.cluster).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from lvr_localcluster import procs
from lvr_localcluster.controlplane import REPO_ROOT, kube_bin_dir
from lvr_localcluster.s3 import S3Endpoint, S3Server

S3_SECRET = "lvr-s3"
DEFAULT_S3_PORT = 9000     # MinIO's port; examples/local/ name http://127.0.0.1:9000
DEFAULT_DIR = Path(os.environ.get("LVR_CLUSTER_DIR", REPO_ROOT / ".cluster"))


def _daemon_pid(state_dir: Path) -> int | None:
    """Pid of a live `serve` daemon for `state_dir`, or None."""
    try:
        info = json.loads((state_dir / "serve.json").read_text())
    except (OSError, ValueError):
        return None
    pid = int(info.get("pid", 0))
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError, ValueError):
        return None
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() if Path(f"/proc/{pid}/cmdline").exists() else b""
    return pid if b"lvr_localcluster" in cmdline else None


def cmd_serve(state_dir: Path) -> int:
    """Run the cluster in this process until SIGTERM/SIGINT (the daemon behind `up`)."""
    from lvr_localcluster.cluster import LocalCluster

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    cluster = LocalCluster(state_dir).start()
    # A fixed port, so that the shipped examples (examples/local/) can name the endpoint.
    s3 = S3Server("lvr", state_dir / "logs", pid_dir=state_dir / "pids", marker=cluster.marker,
                  port=int(os.environ.get("LVR_S3_PORT", DEFAULT_S3_PORT)))
    try:
        endpoint = s3.start()
        cluster.api.ensure("/api/v1/namespaces/default/secrets", s3_secret(endpoint))
        info = {"pid": os.getpid(), "kubeconfig": str(cluster.kubeconfig), "server": cluster.server,
                "nodes": cluster.nodes, "start_seconds": round(cluster.start_seconds, 1),
                "s3": {"endpoint": endpoint.url, "bucket": endpoint.bucket, "secret": S3_SECRET}}
        (state_dir / "serve.json").write_text(json.dumps(info, indent=1))
        stop.wait()
    finally:
        s3.stop()
        cluster.stop()
        (state_dir / "serve.json").unlink(missing_ok=True)
    return 0


def s3_secret(endpoint: S3Endpoint) -> dict:
    """Secret `lvr-s3` in namespace default: the S3 endpoint and keys, for pods' envFrom, and the keys
    under the names a LongVideoDataset's or job's `cache.s3.credentialsSecret` reads (accessKey, secretKey)."""
    data = {**endpoint.env(), "LVR_S3_BUCKET": endpoint.bucket, "accessKey": endpoint.access_key,
            "secretKey": endpoint.secret_key}
    return {"metadata": {"name": S3_SECRET}, "stringData": data}


def cmd_up(state_dir: Path, timeout: float) -> int:
    if _daemon_pid(state_dir):
        return cmd_status(state_dir)
    kube_bin_dir(build=True)  # build (minutes, first time only) in the foreground, with its progress shown
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "serve.json").unlink(missing_ok=True)
    log = state_dir / "serve.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen([sys.executable, "-m", "lvr_localcluster", "serve", "--dir", str(state_dir)],
                                  stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True, cwd=REPO_ROOT)
    deadline = time.monotonic() + timeout
    while not (state_dir / "serve.json").exists():
        if daemon.poll() is not None or time.monotonic() > deadline:
            if daemon.poll() is None:
                daemon.terminate()
            print(f"cluster-up: failed; {log} ends with:\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            return 1
        time.sleep(0.2)
    return cmd_status(state_dir)


def _running(pid: int) -> bool:
    """True while `pid` exists and is neither a zombie nor dead (state from /proc/PID/stat)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def cmd_down(state_dir: Path, timeout: float) -> int:
    pid = _daemon_pid(state_dir)
    if pid:
        os.kill(pid, signal.SIGTERM)
        # Wait for the process itself, not for its cmdline: an exiting process shows an empty cmdline
        # a moment before it is gone.
        if not _wait_gone(pid, timeout):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 10.0)
    leftovers = procs.kill_recorded(state_dir / "pids")
    (state_dir / "serve.json").unlink(missing_ok=True)
    print(f"cluster-down: stopped{' daemon ' + str(pid) if pid else ' (no daemon was running)'}"
          f"{f', ended {leftovers} leftover process group(s)' if leftovers else ''}")
    return 0


def cmd_status(state_dir: Path) -> int:
    if not _daemon_pid(state_dir):
        print(f"cluster: not running (state dir {state_dir}); start it with `make cluster-up`")
        return 1
    info = json.loads((state_dir / "serve.json").read_text())
    print(f"cluster: running (pid {info['pid']}, {info['server']}, nodes {', '.join(info['nodes'])}, "
          f"started in {info['start_seconds']}s)")
    print(f"s3: {info['s3']['endpoint']} bucket {info['s3']['bucket']} (keys in Secret default/{S3_SECRET})")
    print(f"kubeconfig: {info['kubeconfig']}")
    print(f"  export KUBECONFIG={info['kubeconfig']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lvr_localcluster", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "serve", "build"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="state directory (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for up/down")
    args = parser.parse_args(argv)
    state_dir = args.dir.resolve()
    if args.command == "build":
        print(kube_bin_dir(build=True))
        return 0
    if args.command == "serve":
        return cmd_serve(state_dir)
    if args.command == "up":
        return cmd_up(state_dir, args.timeout)
    if args.command == "down":
        return cmd_down(state_dir, args.timeout)
    return cmd_status(state_dir)


if __name__ == "__main__":
    sys.exit(main())
