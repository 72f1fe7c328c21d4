"""Pod addresses and names on the local kubelet: what a CNI plugin and cluster DNS give real pods.

Each pod gets a loopback address of its own, 127.a.b.c (every 127/8 address is local on Linux, so nothing
is configured, and the apiserver and S3 on 127.0.0.1 stay reachable), stable for its namespace/name while
the kubelet runs. Its containers run in a mount and UTS namespace of their own (`unshare`): the hostname is
the pod's, and /etc/hosts is a per-pod file, bind-mounted, in which every pod with a hostname and a
subdomain resolves, as a headless Service's DNS would give it, at `<hostname>.<subdomain>.<namespace>.svc`
(`.cluster.local`, and `<hostname>.<subdomain>` from the same namespace) to its address. The files are
only ever appended to, and a name always maps to the same address, so a reader never meets a stale or
half-written record.

Limits (see README.md): ports are shared by all pods (a process listening on 0.0.0.0:P in one pod takes P
from every other one: torchrun's rendezvous port, a sidecar's port), and nothing isolates traffic.
"""

from __future__ import annotations

import hashlib
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

CLUSTER_DOMAIN = "cluster.local"
# runs inside the pod's new namespaces: the hosts file over /etc/hosts, the hostname, then the container
_ENTER = 'mount --bind "$1" /etc/hosts && hostname "$2" && shift 2 && exec "$@"'


def namespaces_available() -> bool:
    """Whether this machine lets us give a process its own mount and UTS namespace (root, or CAP_SYS_ADMIN)."""
    try:
        return subprocess.run(["unshare", "--mount", "--uts", "--propagation", "private", "true"],
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass(frozen=True)
class PodIdentity:
    """A pod's address, hostname and hosts file."""

    ip: str
    hostname: str
    hosts_file: Path


@dataclass(frozen=True)
class _Member:
    namespace: str
    identity: PodIdentity
    fqdns: tuple[str, ...]       # its headless-Service names, any namespace
    short: tuple[str, ...]       # `<hostname>.<subdomain>`, for pods of its own namespace


class PodNetwork:
    """`attach(pod, pod_dir)` when a pod starts, `command(identity, argv)` for each container process,
    `detach(uid)` when its processes are gone."""

    def __init__(self, isolate: bool | None = None):
        self.isolate = namespaces_available() if isolate is None else isolate
        self._lock = threading.Lock()
        self._addresses: dict[tuple[str, str], str] = {}
        self._taken: set[str] = {"127.0.0.1"}
        self._members: dict[str, _Member] = {}

    def address(self, namespace: str, name: str) -> str:
        """The pod's address: 127.a.b.c from a hash of namespace/name, the next free one on a collision."""
        with self._lock:
            return self._address(namespace, name)

    def _address(self, namespace: str, name: str) -> str:
        key = (namespace, name)
        if key not in self._addresses:
            h = int.from_bytes(hashlib.sha256(f"{namespace}/{name}".encode()).digest()[:4], "big")
            while True:
                a, b, c = 10 + (h >> 16) % 240, (h >> 8) & 255, 1 + (h & 255) % 254
                ip = f"127.{a}.{b}.{c}"
                if ip not in self._taken:
                    break
                h += 1
            self._addresses[key] = ip
            self._taken.add(ip)
        return self._addresses[key]

    def attach(self, pod: dict, pod_dir: Path) -> PodIdentity:
        """Give the pod its address and hosts file, and publish its names to every other pod."""
        meta, spec = pod["metadata"], pod.get("spec") or {}
        ns, uid = meta["namespace"], meta["uid"]
        hostname = spec.get("hostname") or meta["name"]
        sub = spec.get("subdomain")
        fqdns = (f"{hostname}.{sub}.{ns}.svc.{CLUSTER_DOMAIN}", f"{hostname}.{sub}.{ns}.svc",
                 f"{hostname}.{sub}.{ns}") if sub else ()
        short = (f"{hostname}.{sub}",) if sub else ()
        hosts = pod_dir / "etc" / "hosts"
        hosts.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            me = _Member(ns, PodIdentity(self._address(ns, meta["name"]), hostname, hosts), fqdns, short)
            lines = ["127.0.0.1 localhost", " ".join([me.identity.ip, *fqdns, *short, hostname])]
            lines += [self._line(m, ns) for m in self._members.values() if m.fqdns]
            hosts.write_text("\n".join(lines) + "\n")
            if fqdns:
                for other in self._members.values():
                    with open(other.identity.hosts_file, "a") as f:
                        f.write(self._line(me, other.namespace) + "\n")
            self._members[uid] = me
        return me.identity

    @staticmethod
    def _line(member: _Member, reader_namespace: str) -> str:
        names = member.fqdns + (member.short if member.namespace == reader_namespace else ())
        return " ".join([member.identity.ip, *names])

    def detach(self, uid: str) -> None:
        with self._lock:
            self._members.pop(uid, None)

    def command(self, identity: PodIdentity, argv: list[str]) -> list[str]:
        """`argv` run inside the pod's own mount and UTS namespaces (unchanged when they are unavailable)."""
        if not self.isolate:
            return argv
        return ["unshare", "--mount", "--uts", "--propagation", "private", "--", "sh", "-c", _ENTER, "sh",
                str(identity.hosts_file), identity.hostname, *argv]
