"""Real nodes for the local cluster: per node a containerd (its own root, state and socket) and a real kubelet
of the control plane's version, both in a mount namespace of their own; one bridge for every node's pods;
one kube-proxy (iptables) for the host, so that pods reach the apiserver through the `kubernetes` Service.

Pods get addresses from one /16 on the bridge `lvr0`, a /24 range per node (host-local IPAM), so that a pod
on one node reaches a pod on the other over the bridge. The bridge's address is the nodes' InternalIP (the
apiserver reaches each kubelet there, on a port of its own) and the address the apiserver advertises.

Needs root, Linux, containerd, runc, the CNI plugins, iptables and dnsmasq (hack/install-node-deps.sh), the
kubelet and kube-proxy (make node-bins) and the pause and operator images (make images); `missing()` names
what lacks.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from lvr_localcluster import procs
from lvr_localcluster.kubeapi import ApiError
from lvr_localcluster.ports import free_port

BRIDGE = "lvr0"
POD_CIDR = "10.244.0.0/16"
NODE_IP = "10.244.0.1"
PAUSE_IMAGE = "localhost/lvr-pause:3"
CNI_BIN = Path("/usr/lib/cni")
CLUSTER_DOMAIN = "cluster.local"
IMAGE_CACHE = Path(os.environ.get("LVR_IMAGE_CACHE", Path.home() / ".cache" / "lvr" / "images"))
HOST_TOOLS = {"containerd": "containerd", "runc": "runc", "ctr": "containerd", "iptables": "iptables",
              "ip": "iproute2", "unshare": "util-linux", "dnsmasq": "dnsmasq-base"}
IMAGES = ("lvr-pause", "operator")      # imported into every node at start


@dataclass(frozen=True)
class NodeSpec:
    """One node: its name, its pods' address range (10.244.<index>.0/24), labels, taints, GPUs advertised."""

    name: str
    index: int
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[str, ...] = ()
    gpus: int = 0


def default_specs() -> list[NodeSpec]:
    """The local cluster's nodes as the stand-in shapes them: two 8-GPU nodes (tainted, labelled as GPU
    Feature Discovery would) and a CPU node."""
    from lvr_localcluster.nodes import CPU_NODE, GPU_LABELS, GPU_NODE, GPU_NODE_2, GPU_TAINT

    taint = f"{GPU_TAINT['key']}={GPU_TAINT['value']}:{GPU_TAINT['effect']}"
    local = {"lvr.dev/local-node": "true"}
    return [NodeSpec(GPU_NODE, 0, {**local, **GPU_LABELS}, (taint,), 8),
            NodeSpec(GPU_NODE_2, 1, {**local, **GPU_LABELS}, (taint,), 8),
            NodeSpec(CPU_NODE, 2, local)]


def image_archives(names: tuple[str, ...] = IMAGES) -> list[Path]:
    """The docker archives hack/build-images.sh saved for the images named (each node's containerd imports
    every one: about 20 s per GB per node on 2 cores)."""
    found = sorted(IMAGE_CACHE.glob("*.tar")) if IMAGE_CACHE.is_dir() else []
    return [a for a in found if any(n in a.name for n in names)]


def missing(bin_dir: Path) -> list[str]:
    """What a real node needs and this machine lacks, each with the command that provides it."""
    gaps = []
    if os.uname().sysname != "Linux" or os.geteuid() != 0:
        gaps.append("root on Linux (containerd, runc and the bridge need it)")
    for tool, package in HOST_TOOLS.items():
        if shutil.which(tool) is None:
            gaps.append(f"{tool} (hack/install-node-deps.sh installs Debian's {package})")
    if not (CNI_BIN / "bridge").exists():
        gaps.append("CNI plugins in /usr/lib/cni (hack/install-node-deps.sh: containernetworking-plugins)")
    for exe in ("kubelet", "kube-proxy"):
        if not os.access(bin_dir / exe, os.X_OK):
            gaps.append(f"{bin_dir / exe} (make node-bins)")
    archives = image_archives()
    gaps += [f"the {name} image in {IMAGE_CACHE} (make images)" for name in IMAGES
             if not any(name in a.name for a in archives)]
    return gaps


def cni_conflist(spec: NodeSpec) -> dict:
    """The node's CNI network: the shared bridge, this node's /24 of the pod /16, the bridge as gateway."""
    return {"cniVersion": "0.4.0", "name": "lvr", "plugins": [
        {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True, "hairpinMode": True,
         "ipam": {"type": "host-local", "ranges": [[{
             "subnet": POD_CIDR, "gateway": NODE_IP,
             "rangeStart": f"10.244.{spec.index + 1}.2", "rangeEnd": f"10.244.{spec.index + 1}.254"}]],
             "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(ipam_dir(spec))}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
        {"type": "loopback"}]}


def containerd_config(node_dir: Path, sandbox_image: str = PAUSE_IMAGE) -> str:
    """containerd's config (version 2) for one node: its own root, state and socket; the CRI plugin with the
    local pause image, runc with cgroupfs, and `restrict_oom_score_adj` (without CAP_SYS_RESOURCE a negative
    oom_score_adj fails every sandbox)."""
    return f"""version = 2
root = "{node_dir}/containerd/root"
state = "{node_dir}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{node_dir}/containerd.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{node_dir}/cni"
"""


def kubelet_argv(bin_dir: Path, spec: NodeSpec, node_dir: Path, kubeconfig: Path, port: int,
                 cluster_dns: str) -> list[str]:
    """The kubelet of one node: remote runtime (its containerd), cgroupfs without QoS cgroups or eviction (a
    shared host's memory and disk are not the node's), the bridge address as InternalIP, its own port."""
    labels = ",".join(f"{k}={v}" for k, v in spec.labels.items())
    argv = [str(bin_dir / "kubelet"), f"--kubeconfig={kubeconfig}", f"--hostname-override={spec.name}",
            "--container-runtime=remote", f"--container-runtime-endpoint=unix://{node_dir}/containerd.sock",
            "--runtime-request-timeout=5m", "--cgroup-driver=cgroupfs", "--cgroups-per-qos=false",
            "--enforce-node-allocatable=", "--fail-swap-on=false", "--eviction-hard=",
            "--image-gc-high-threshold=100", "--image-gc-low-threshold=99", f"--pod-infra-container-image={PAUSE_IMAGE}",
            f"--node-ip={NODE_IP}", f"--port={port}", "--read-only-port=0", "--healthz-port=0",
            f"--root-dir={node_dir}/kubelet", f"--cert-dir={node_dir}/kubelet-pki",
            f"--volume-plugin-dir={node_dir}/volume-plugins", f"--cluster-dns={cluster_dns}",
            f"--cluster-domain={CLUSTER_DOMAIN}", f"--resolv-conf={node_dir}/resolv.conf",
            "--node-status-update-frequency=4s", "--sync-frequency=5s", "--serialize-image-pulls=false",
            "--max-pods=110", "-v=1"]
    if labels:
        argv.append(f"--node-labels={labels}")
    if spec.taints:
        argv.append(f"--register-with-taints={','.join(spec.taints)}")
    return argv


def ensure_bridge() -> None:
    """The pods' bridge with the nodes' address, created before any pod so that the apiserver can advertise
    it and the kubelets can report it."""
    if subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True).returncode != 0:
        subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
    addrs = subprocess.run(["ip", "-4", "addr", "show", BRIDGE], capture_output=True, text=True).stdout
    if f"{NODE_IP}/" not in addrs:
        subprocess.run(["ip", "addr", "add", f"{NODE_IP}/16", "dev", BRIDGE], check=True)
    subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)


def node_identities(specs: list[NodeSpec]) -> dict[str, tuple[str, str]]:
    """Token identities the apiserver accepts: one per kubelet (the Node authorizer's system:node:<name>)
    and kube-proxy's (bound to system:node-proxier by the default RBAC)."""
    ids = {f"system:node:{s.name}": (secrets.token_hex(16), "system:nodes") for s in specs}
    ids["system:kube-proxy"] = (secrets.token_hex(16), "system:authenticated")
    return ids


@dataclass
class RealNodes:
    """Start and stop the nodes' containerds and kubelets, and kube-proxy, under `state_dir/nodes`."""

    state_dir: Path
    bin_dir: Path
    marker: str
    specs: list[NodeSpec]
    cluster_dns: str = NODE_IP
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.state_dir / "nodes"

    def node_dir(self, spec: NodeSpec) -> Path:
        return self.root / spec.name

    def log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def start(self, control, images: list[Path]) -> None:
        """Start every node (containerd, then its kubelet) and kube-proxy; import `images` (docker archives)
        into every node's containerd."""
        for spec in self.specs:
            node_dir = self.node_dir(spec)
            shutil.rmtree(node_dir, ignore_errors=True)
            shutil.rmtree(ipam_dir(spec), ignore_errors=True)
            (node_dir / "cni").mkdir(parents=True)
            (node_dir / "cni" / "10-lvr.conflist").write_text(json.dumps(cni_conflist(spec), indent=1))
            (node_dir / "containerd.toml").write_text(containerd_config(node_dir))
            (node_dir / "resolv.conf").write_text(f"nameserver {self.cluster_dns}\n")
            token, _ = control.identities[f"system:node:{spec.name}"]
            kubeconfig = control.write_kubeconfig(node_dir / "kubelet.kubeconfig", token, f"system:node:{spec.name}")
            # containerd and the kubelet share a mount namespace of their own, with a private /var/log/pods:
            # two kubelets on one host otherwise delete each other's pod log folders.
            logs = node_dir / "pod-logs"
            logs.mkdir()
            kubelet = " ".join(f"'{a}'" for a in kubelet_argv(self.bin_dir, spec, node_dir, kubeconfig,
                                                                 10250 + spec.index, self.cluster_dns))
            script = (f"mkdir -p /var/log/pods && mount --bind '{logs}' /var/log/pods && "
                      f"containerd --config '{node_dir}/containerd.toml' >'{self.log_path('containerd-' + spec.name)}' 2>&1 & "
                      f"for i in $(seq 100); do [ -S '{node_dir}/containerd.sock' ] && break; sleep 0.1; done; "
                      f"for a in {' '.join(repr(str(i)) for i in images)}; do "
                      f"ctr --address '{node_dir}/containerd.sock' -n k8s.io images import --no-unpack=false \"$a\" >/dev/null || exit 3; done; "
                      f"exec {kubelet}")
            self.procs[spec.name] = procs.spawn(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                                log_path=self.log_path("kubelet-" + spec.name),
                                                pid_dir=self.state_dir / "pids", marker=self.marker,
                                                name="node-" + spec.name)
        proxy_config = control.write_kubeconfig(self.root / "kube-proxy.kubeconfig",
                                                control.identities["system:kube-proxy"][0], "system:kube-proxy")
        self.procs["kube-proxy"] = procs.spawn(
            [str(self.bin_dir / "kube-proxy"), f"--kubeconfig={proxy_config}", "--proxy-mode=iptables",
             f"--cluster-cidr={POD_CIDR}", "--conntrack-max-per-core=0", f"--hostname-override={self.specs[-1].name}",
             f"--bind-address={NODE_IP}",
             f"--metrics-bind-address=127.0.0.1:{free_port()}", f"--healthz-bind-address=127.0.0.1:{free_port()}",
             "-v=1"],
            log_path=self.log_path("kube-proxy"), pid_dir=self.state_dir / "pids", marker=self.marker,
            name="kube-proxy")

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                log = self.log_path("kube-proxy" if name == "kube-proxy" else "kubelet-" + name)
                raise RuntimeError(f"{name} exited with code {proc.returncode}; {log} ends with:\n"
                                   f"{log.read_text(errors='replace')[-2000:]}")

    def advertise_gpus(self, api, timeout: float = 60) -> None:
        """Extended resources by a JSON patch of each node's status, the documented way for resources no
        device plugin reports; waits until every node has registered."""
        deadline = time.monotonic() + timeout
        for spec in self.specs:
            while True:
                self.check_alive()
                try:
                    api.get(f"/api/v1/nodes/{spec.name}")
                    break
                except ApiError as err:
                    if err.status != 404:
                        raise
                if time.monotonic() > deadline:
                    raise TimeoutError(f"node {spec.name} did not register within {timeout:.0f}s; "
                                       f"log: {self.log_path('kubelet-' + spec.name)}")
                time.sleep(0.5)
            if spec.gpus:
                patch = [{"op": "add", "path": f"/status/{part}/nvidia.com~1gpu", "value": str(spec.gpus)}
                         for part in ("capacity", "allocatable")]
                api.patch(f"/api/v1/nodes/{spec.name}/status", patch, content_type="application/json-patch+json")

    def wait_ready(self, api, timeout: float = 120) -> None:
        """Until every node reports Ready (its runtime and network are up)."""
        deadline = time.monotonic() + timeout
        for spec in self.specs:
            while True:
                self.check_alive()
                node = api.get(f"/api/v1/nodes/{spec.name}")
                ready = [c for c in node.get("status", {}).get("conditions", []) if c["type"] == "Ready"]
                if ready and ready[0]["status"] == "True":
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"node {spec.name} not Ready within {timeout:.0f}s "
                                       f"({ready[0].get('message') if ready else 'no condition'}); "
                                       f"log: {self.log_path('kubelet-' + spec.name)}")
                time.sleep(0.5)

    def stop(self, grace: float = 5.0) -> None:
        """Stop every node: its containers first (SIGKILL through its containerd: a container outlives its shim,
        reparented to init, if only the shim dies), then its kubelet and containerd; then kube-proxy."""
        for spec in self.specs:
            self._kill_containers(spec)
        for name in list(self.procs):
            proc = self.procs.pop(name)
            if proc.poll() is None:
                procs.kill_group(proc.pid, grace, proc)
            procs.forget(self.state_dir / "pids", proc)
        for spec in self.specs:
            subprocess.run(["pkill", "-f", f"containerd-shim.*{self.node_dir(spec)}"], capture_output=True)
            shutil.rmtree(ipam_dir(spec), ignore_errors=True)

    def _kill_containers(self, spec: NodeSpec) -> None:
        sock = self.node_dir(spec) / "containerd.sock"
        if not sock.exists():
            return
        ctr = ["ctr", "--address", str(sock), "--timeout", "10s", "-n", "k8s.io", "tasks"]
        listed = subprocess.run([*ctr, "ls", "-q"], capture_output=True, text=True, timeout=30)
        for task in listed.stdout.split():
            subprocess.run([*ctr, "kill", "--all", "--signal", "SIGKILL", task], capture_output=True, timeout=30)


def ipam_dir(spec: NodeSpec) -> Path:
    """Where host-local IPAM records the node's allocated pod addresses (cleared at start and stop: a range
    of 253 addresses fills up over restarts otherwise)."""
    return Path("/var/lib/cni") / f"lvr-{spec.name}"
