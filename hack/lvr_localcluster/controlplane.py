"""The real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-scheduler, controller-manager.

Binaries come from hack/build-kube.sh (built once from Debian's source package, cached by version).
Every port is picked free at start, and the deprecated insecure ports of 1.20 are switched off, so several
clusters (several engineers, parallel test sessions) can run on one machine.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from lvr_localcluster import procs
from lvr_localcluster.pki import Pki, make_pki
from lvr_localcluster.ports import free_port, wait_for_port

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-kube.sh"
KUBE_VERSION = os.environ.get("LVR_KUBE_VERSION", "1.20.2")
ADMIN_USER = "lvr-admin"
SERVICE_CIDR = "10.96.0.0/24"


def kube_bin_dir(build: bool = True) -> Path:
    """The directory with etcd and the three kube binaries; runs hack/build-kube.sh when they are missing."""
    override = os.environ.get("LVR_KUBE_BIN")
    if override:
        return Path(override)
    cache = Path(os.environ.get("LVR_KUBE_CACHE", Path.home() / ".cache" / "lvr")) / f"kube-{KUBE_VERSION}"
    if (cache / ".complete").exists():
        return cache / "bin"
    if not build:
        raise FileNotFoundError(f"Kubernetes binaries not built: {cache} is missing; run `make cluster-bins`")
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{BUILD_SCRIPT} failed (exit {result.returncode}); its message is above")
    return Path(result.stdout.strip().splitlines()[-1])


@dataclass
class ControlPlane:
    """Start/stop the four control-plane processes under `state_dir`; `server` and `admin_token` once up."""

    state_dir: Path
    bin_dir: Path
    marker: str
    server: str = ""
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    pki: Pki | None = None
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    # Where the apiserver listens and what it advertises: loopback, or for real nodes the address pods reach
    # it at (kube-proxy forwards the `kubernetes` Service there, never to loopback); and the identities of kubelets and kube-proxy: user -> (token, groups).
    advertise_address: str = "127.0.0.1"
    identities: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def pid_dir(self) -> Path:
        return self.state_dir / "pids"

    def log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def _start(self, name: str, argv: list[str]) -> subprocess.Popen:
        proc = procs.spawn(argv, log_path=self.log_path(name), pid_dir=self.pid_dir, marker=self.marker, name=name)
        self.procs[name] = proc
        return proc

    def start(self, timeout: float = 60) -> None:
        """Bring up etcd, then the apiserver (wait for /readyz), then scheduler and controller-manager."""
        for exe in ("etcd", "kube-apiserver", "kube-scheduler", "kube-controller-manager"):
            if not os.access(self.bin_dir / exe, os.X_OK):
                raise FileNotFoundError(f"{self.bin_dir / exe} missing; run hack/build-kube.sh (make cluster-bins)")
        self.pki = make_pki(self.state_dir / "pki", extra_ips=[self.advertise_address])
        etcd_url = self._start_etcd(timeout)
        self._start_apiserver(etcd_url, timeout)
        kubeconfig = self.write_kubeconfig(self.state_dir / "admin.kubeconfig", self.admin_token, ADMIN_USER)
        common = [f"--kubeconfig={kubeconfig}", "--leader-elect=false", "--port=0", "--secure-port=0", "-v=1"]
        self._start("kube-scheduler", [str(self.bin_dir / "kube-scheduler"), *common])
        self._start("kube-controller-manager", [
            str(self.bin_dir / "kube-controller-manager"), *common, "--controllers=*",
            f"--service-account-private-key-file={self.pki.sa_private_key}", f"--root-ca-file={self.pki.ca_cert}",
            "--use-service-account-credentials=false", f"--service-cluster-ip-range={SERVICE_CIDR}"])
        time.sleep(0.5)
        for name in ("kube-scheduler", "kube-controller-manager"):
            self._check_alive(name)

    def _start_etcd(self, timeout: float) -> str:
        client, peer = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        data = etcd_data_dir(self.state_dir)
        remove_tree(data)
        proc = self._start("etcd", [
            str(self.bin_dir / "etcd"), "--name=lvr", f"--data-dir={data}",
            "--heartbeat-interval=250", "--election-timeout=2500",
            f"--listen-client-urls={client_url}", f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=lvr={peer_url}", "--log-level=warn"])
        wait_for_port(client, timeout, proc, f"etcd (log: {self.log_path('etcd')})")
        return client_url

    def _start_apiserver(self, etcd_url: str, timeout: float) -> None:
        port = free_port()
        tokens = self.state_dir / "tokens.csv"
        lines = [f'{self.admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"']
        lines += [f'{token},{user},{user},"{groups}"' for user, (token, groups) in self.identities.items()]
        tokens.write_text("\n".join(lines) + "\n")
        tokens.chmod(0o600)
        pki = self.pki
        proc = self._start("kube-apiserver", [
            str(self.bin_dir / "kube-apiserver"), f"--etcd-servers={etcd_url}",
            f"--bind-address={self.advertise_address}", f"--advertise-address={self.advertise_address}",
            f"--secure-port={port}", "--insecure-port=0",
            f"--tls-cert-file={pki.serving_cert}", f"--tls-private-key-file={pki.serving_key}",
            f"--token-auth-file={tokens}",
            f"--authorization-mode={'Node,RBAC' if self.identities else 'RBAC'}",
            "--kubelet-preferred-address-types=InternalIP",
            f"--service-account-key-file={pki.sa_public_key}",
            f"--service-account-signing-key-file={pki.sa_private_key}",
            "--service-account-issuer=https://kubernetes.default.svc", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true", "--profiling=false", "-v=1"])
        self.server = f"https://{self.advertise_address}:{port}"
        self._wait_ready(proc, timeout)

    def _wait_ready(self, proc: subprocess.Popen, timeout: float) -> None:
        deadline, last = time.monotonic() + timeout, ""
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        while time.monotonic() < deadline:
            self._check_alive("kube-apiserver")
            try:
                resp = requests.get(f"{self.server}/readyz", headers=headers, verify=str(self.pki.ca_cert), timeout=2)
                if resp.status_code == 200:
                    return
                last = resp.text[-300:]
            except requests.RequestException as err:
                last = str(err)
            time.sleep(0.2)
        raise TimeoutError(f"kube-apiserver not ready within {timeout:.0f}s ({last}); "
                           f"log: {self.log_path('kube-apiserver')}")

    def _check_alive(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is not None:
            tail = self.log_path(name).read_text(errors="replace")[-1500:]
            raise RuntimeError(f"{name} exited with code {proc.returncode} at start; "
                               f"log {self.log_path(name)} ends with:\n{tail}")

    def write_kubeconfig(self, path: Path, token: str, user: str, namespace: str = "default") -> Path:
        """A kubeconfig for `user` with a bearer `token`, verifying the apiserver against our CA."""
        import base64

        import yaml

        ca = base64.b64encode(self.pki.ca_cert.read_bytes()).decode()
        config = {"apiVersion": "v1", "kind": "Config", "current-context": "lvr-local",
                  "clusters": [{"name": "lvr-local", "cluster": {"server": self.server,
                                                                 "certificate-authority-data": ca}}],
                  "users": [{"name": user, "user": {"token": token}}],
                  "contexts": [{"name": "lvr-local", "context": {"cluster": "lvr-local", "user": user,
                                                                 "namespace": namespace}}]}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path

    def stop(self, grace: float = 1.0) -> None:
        """Stop in reverse order (controllers first, etcd last) so nothing logs errors about a missing peer.

        The grace is short on purpose: the apiserver otherwise drains open watches for seconds, and the
        state is thrown away at the next start anyway."""
        for name in reversed(list(self.procs)):
            proc = self.procs.pop(name)
            if proc.poll() is None:
                procs.kill_group(proc.pid, grace, proc)
            procs.forget(self.pid_dir, proc)
        remove_tree(etcd_data_dir(self.state_dir))


def etcd_data_dir(state_dir: Path) -> Path:
    """etcd's data on tmpfs (/dev/shm) when there is one, one directory per state dir (wiped at the next
    start there): a throw-away cluster needs no durable writes, and etcd's fsyncs on a busy disk made the
    first requests time out ("etcdserver: request timed out") while a CI machine installed packages."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm / f"lvr-etcd-{hashlib.sha1(str(state_dir).encode()).hexdigest()[:12]}"
    return state_dir / "etcd"


def remove_tree(path: Path) -> None:
    """Remove a state directory; tolerate files that vanish while we walk it."""
    shutil.rmtree(path, ignore_errors=True)
