#!/usr/bin/env bash
# The host packages the local cluster's real nodes and image builds need, from Debian 12 (bookworm):
# containerd (its CRI plugin), runc, the CNI plugins (bridge, host-local, portmap, loopback), iptables and
# conntrack for kube-proxy, dnsmasq for cluster DNS, podman + buildah (image builds without a daemon), debootstrap (the base image),
# and a static libc for the pause image. Root and apt-get needed; a second run installs nothing.
set -euo pipefail

packages=(containerd runc containernetworking-plugins iptables conntrack dnsmasq-base podman buildah debootstrap libc6-dev gcc)
die() { echo "install-node-deps: ERROR: $*" >&2; exit 1; }

command -v apt-get >/dev/null || die "apt-get not found: the local cluster's real nodes need Debian 12 (bookworm);
  elsewhere install: ${packages[*]}"
missing=()
for pkg in "${packages[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
((${#missing[@]})) || exit 0
[[ $(id -u) -eq 0 ]] || die "must run as root to install: ${missing[*]} (sudo $0)"
echo "install-node-deps: apt-get install ${missing[*]}" >&2
apt-get update -qq || die "apt-get update failed; check network access to deb.debian.org"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
  || die "apt-get install ${missing[*]} failed (see above)"
