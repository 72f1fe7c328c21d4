"""Cluster DNS for the real nodes: dnsmasq (Debian's) answering on the nodes' address with the records
CoreDNS's kubernetes plugin would serve, from a hosts file that a watcher thread rewrites when Services or
Endpoints change. The one stand-in left on the real nodes: no registry we reach has CoreDNS.

Records (A, for `cluster.local`):
    <service>.<namespace>.svc.cluster.local              the ClusterIP, or every ready address of a headless one
    <hostname>.<service>.<namespace>.svc.cluster.local   each endpoint with a hostname (a headless Service's pods)
Names outside the cluster go to the host's resolvers.
"""

from __future__ import annotations

import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from lvr_localcluster import procs

DOMAIN = "cluster.local"


def hosts_lines(services: list[dict], endpoints: list[dict]) -> list[str]:
    """The hosts-file lines for these Services and Endpoints (pure)."""
    lines = []
    by_name = {(e["metadata"]["namespace"], e["metadata"]["name"]): e for e in endpoints}
    for svc in services:
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        fqdn = f"{name}.{ns}.svc.{DOMAIN}"
        cluster_ip = svc.get("spec", {}).get("clusterIP")
        if cluster_ip and cluster_ip != "None":
            lines.append(f"{cluster_ip} {fqdn}")
            continue
        for subset in by_name.get((ns, name), {}).get("subsets") or []:
            for addr in subset.get("addresses") or []:
                lines.append(f"{addr['ip']} {fqdn}")
                if addr.get("hostname"):
                    lines.append(f"{addr['ip']} {addr['hostname']}.{fqdn}")
    return lines


def upstream_servers(resolv_conf: Path = Path("/etc/resolv.conf")) -> list[str]:
    """The host's resolvers, for names outside the cluster."""
    if not resolv_conf.exists():
        return []
    return [line.split()[1] for line in resolv_conf.read_text().splitlines()
            if line.startswith("nameserver") and len(line.split()) > 1]


@dataclass
class ClusterDns:
    """dnsmasq on `address` plus the thread that keeps its hosts file current (polls the API every second)."""

    state_dir: Path
    address: str
    marker: str
    api: object = None
    proc: subprocess.Popen | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    @property
    def hosts_dir(self) -> Path:
        return self.state_dir / "dns"

    def start(self, api) -> None:
        self.api = api
        self.hosts_dir.mkdir(parents=True, exist_ok=True)
        self.refresh()
        servers = [f"--server={s}" for s in upstream_servers() if s != self.address]
        self.proc = procs.spawn(
            ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", f"--listen-address={self.address}",
             "--bind-interfaces", "--except-interface=lo", f"--hostsdir={self.hosts_dir}", "--no-negcache",
             f"--local=/{DOMAIN}/", "--log-facility=-", "--user=root", *servers],
            log_path=self.state_dir / "logs" / "dnsmasq.log", pid_dir=self.state_dir / "pids", marker=self.marker,
            name="dnsmasq")
        self.thread = threading.Thread(target=self._loop, name="cluster-dns", daemon=True)
        self.thread.start()

    def refresh(self) -> None:
        services = self.api.get("/api/v1/services")["items"]
        endpoints = self.api.get("/api/v1/endpoints")["items"]
        text = "\n".join(sorted(hosts_lines(services, endpoints))) + "\n"
        target = self.hosts_dir / "cluster"
        if not target.exists() or target.read_text() != text:
            tmp = self.hosts_dir / ".cluster.tmp"       # outside dnsmasq's view until whole
            tmp.write_text(text)
            tmp.replace(target)

    def _loop(self) -> None:
        while not self.stop_event.wait(1.0):
            try:
                self.refresh()
            except Exception:       # the apiserver restarting or stopping: try again next second
                continue

    def stop(self) -> None:
        self.stop_event.set()
        if self.proc is not None and self.proc.poll() is None:
            procs.kill_group(self.proc.pid, 1.0, self.proc)
        if self.proc is not None:
            procs.forget(self.state_dir / "pids", self.proc)
        self.proc = None
