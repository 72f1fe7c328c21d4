#!/usr/bin/env bash
# Build the control plane (kube-apiserver, kube-scheduler, kube-controller-manager) and the node components
# (kubelet, kube-proxy) from Debian's `kubernetes` source package, and cache them (with etcd) under
# ~/.cache/lvr/kube-<version>/bin. Later runs reuse the cache and build only what it lacks.
#
# Why from source: no registry reachable from our machines ships these binaries (see
# ../shared/ENVIRONMENT.md, "Kubernetes, real, without Docker"). Debian bookworm carries the full 1.20 tree
# with vendor/, which builds offline with Debian's Go.
#
# Usage: hack/build-kube.sh            build if needed, print the bin directory on stdout
#        LVR_KUBE_CACHE=DIR            cache root (default ~/.cache/lvr)
#        LVR_KUBE_VERSION=1.20.2       upstream version expected from Debian's source package
#        LVR_KUBE_NODE=1               also build kubelet and kube-proxy (real nodes)
#        LVR_KEEP_BUILD=1              keep the ~2 GB source/work tree after a successful build
set -euo pipefail

version=${LVR_KUBE_VERSION:-1.20.2}
cache_root=${LVR_KUBE_CACHE:-$HOME/.cache/lvr}
dest=$cache_root/kube-$version
bin=$dest/bin
work=$cache_root/build-kube-$version
binaries=(kube-apiserver kube-scheduler kube-controller-manager)
# LVR_KUBE_NODE=1 (make node-bins): the real nodes' kubelet and kube-proxy too (about 4 more minutes).
[[ ${LVR_KUBE_NODE:-0} == 1 ]] && binaries+=(kubelet kube-proxy)
apt_packages=(golang-go dpkg-dev rsync make etcd-server golang-github-modern-go-reflect2-dev)

log() { echo "build-kube: $*" >&2; }
die() { echo "build-kube: ERROR: $*" >&2; exit 1; }

cached() { [[ -f $dest/.complete ]] && for b in "${binaries[@]}" etcd; do [[ -x $bin/$b ]] || return 1; done; }

to_build() { wanted=(); for b in "${binaries[@]}"; do [[ -x $bin/$b ]] || wanted+=("$b"); done; }

need_root_apt() {
  # Every build step below needs apt (packages, deb-src) and root; say so before doing anything.
  command -v apt-get >/dev/null || die "apt-get not found: this script needs Debian 12 (bookworm).
  On another system build kube-apiserver/scheduler/controller-manager 1.20 yourself and put them,
  with etcd, in $bin, then: touch $dest/.complete"
  [[ $(id -u) -eq 0 ]] || die "must run as root to apt-get install build tools and add deb-src entries.
  Re-run as root (sudo $0), or have an admin install: ${missing[*]:-(nothing)} and add deb-src lines for
  bookworm, bookworm-updates, bookworm-security (then apt-get update); after that no root is needed."
}

has_deb_src() { grep -rqsE '^(deb-src|Types:.*deb-src)' /etc/apt/sources.list /etc/apt/sources.list.d/; }

missing_packages() {
  missing=()
  for pkg in "${apt_packages[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
}

add_deb_src() {
  # apt-get source needs deb-src entries; the stock image only has binary ones.
  if has_deb_src; then return; fi
  log "adding deb-src entries for bookworm to /etc/apt/sources.list.d/lvr-deb-src.sources"
  cat > /etc/apt/sources.list.d/lvr-deb-src.sources <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
}

install_packages() {
  log "apt-get update + install ${apt_packages[*]}"
  apt-get update -qq || die "apt-get update failed; check network access to deb.debian.org"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null \
    || die "apt-get install ${apt_packages[*]} failed (see above)"
}

fetch_source() {
  # Unpacks Debian's kubernetes source into $work/src, checking it is the version we key the cache by.
  rm -rf "$work" && mkdir -p "$work"
  log "downloading Debian source package kubernetes"
  (cd "$work" && apt-get source --download-only -qq kubernetes >/dev/null 2>&1) \
    || die "apt-get source kubernetes failed; is deb-src configured and deb.debian.org reachable?"
  local dsc; dsc=$(ls "$work"/kubernetes_*.dsc)
  # Debian's version looks like 1.20.5+really1.20.2-1.1+deb12u1: the tree inside is the "really" one.
  debian_version=$(basename "$dsc" .dsc | sed -E 's/^kubernetes_//')
  local got; got=$(sed -E 's/-[^-]*$//; s/^.*\+really//; s/\+.*$//' <<<"$debian_version")
  [[ $got == "$version" ]] || die "Debian ships kubernetes $got, expected $version; re-run with LVR_KUBE_VERSION=$got"
  (cd "$work" && dpkg-source --no-check -x "$dsc" src >/dev/null) || die "dpkg-source -x $dsc failed"
}

replace_reflect2() {
  # The vendored reflect2 1.0.1 crashes the apiserver under Go >= 1.18 on the first custom-object create.
  local good=/usr/share/gocode/src/github.com/modern-go/reflect2 vend=$work/src/vendor/github.com/modern-go/reflect2
  [[ -d $good ]] || die "$good missing; apt-get install golang-github-modern-go-reflect2-dev"
  log "replacing vendored reflect2 with Debian's $(dpkg-query -W -f='${Version}' golang-github-modern-go-reflect2-dev)"
  rm -f "$vend"/*.go "$vend"/*.s
  find "$good" -maxdepth 1 \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' -exec cp {} "$vend"/ \;
}

compile() {
  local gopath=$work/gopath
  mkdir -p "$gopath/src/k8s.io" && ln -sfn "$work/src" "$gopath/src/k8s.io/kubernetes"
  to_build
  log "compiling ${wanted[*]} (about 4 minutes on 2 cores for the control plane, 4 more for the node; log: $work/make.log)"
  local what; what=$(printf 'cmd/%s ' "${wanted[@]}")
  (cd "$gopath/src/k8s.io/kubernetes" && GOPATH=$gopath GO111MODULE=off CGO_ENABLED=0 \
    make WHAT="${what% }" >"$work/make.log" 2>&1) || { tail -30 "$work/make.log" >&2; die "make failed; full log: $work/make.log"; }
  mkdir -p "$bin"
  for b in "${wanted[@]}"; do
    cp "$(find "$work/src/_output" -type f -name "$b" -perm -u+x | head -1)" "$bin/$b" || die "$b not produced"
  done
  [[ -x $bin/etcd ]] || cp "$(command -v etcd)" "$bin/etcd" || die "etcd not found after installing etcd-server"
}

main() {
  if cached; then echo "$bin"; exit 0; fi
  missing_packages
  if ((${#missing[@]})) || ! has_deb_src; then need_root_apt; fi
  mkdir -p "$cache_root"
  exec 9>"$cache_root/build-kube.lock"
  flock 9  # one build at a time on a shared machine; the loser then finds the cache
  if cached; then echo "$bin"; exit 0; fi
  local t0=$SECONDS
  if ((${#missing[@]})) || ! has_deb_src; then add_deb_src; install_packages; fi
  fetch_source; replace_reflect2; compile
  echo "kubernetes $debian_version" > "$dest/versions"
  dpkg-query -W -f='etcd-server ${Version}\n' etcd-server >> "$dest/versions"
  echo "$version" > "$dest/.complete"
  [[ ${LVR_KEEP_BUILD:-0} == 1 ]] || rm -rf "$work"
  log "built in $((SECONDS - t0))s into $bin"
  echo "$bin"
}
main "$@"
