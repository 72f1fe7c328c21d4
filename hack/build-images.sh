#!/usr/bin/env bash
# Build the images the local cluster runs, without a container daemon (podman, as root), on a Debian base
# made here with debootstrap (no registry is reachable from our machines):
#   localhost/lvr-base:bookworm          Debian 12 minbase + python3 (the CPU stand-in for the GPU bases)
#   localhost/lvr-pause:3                the pod sandbox's pause process, static, FROM scratch
#   localhost/longvideo-rl/operator:dev  ./Dockerfile, on the base above
#   localhost/longvideo-rl/trainer:cpu   images/trainer/Dockerfile, on the base above with CPU torch, no flash-attn
# The product's Dockerfiles are the recipes: build arguments choose the base and the torch flavour. podman's
# layer cache makes a rebuild with unchanged sources take seconds. Each image is also saved as a
# docker-archive under $LVR_IMAGE_CACHE (default ~/.cache/lvr/images), keyed by image ID, for
# `ctr images import` into the nodes' containerd.
#
# Usage: hack/build-images.sh [base|pause|operator|trainer ...]   (default: all); prints the archive folder
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${LVR_IMAGE_CACHE:-$HOME/.cache/lvr/images}
export CONTAINERS_CONF=$here/images/containers.conf
base=localhost/lvr-base:bookworm
base_packages=python3,python3-pip,python3-venv,python-is-python3,passwd,ca-certificates
mirror=${LVR_DEBIAN_MIRROR:-http://deb.debian.org/debian}

log() { echo "build-images: $*" >&2; }
die() { echo "build-images: ERROR: $*" >&2; exit 1; }

preflight() {
  [[ $(uname -s) == Linux ]] || die "needs Linux (containers run under runc)"
  [[ $(id -u) -eq 0 ]] || die "needs root (podman builds and containerd imports as root); re-run with sudo"
  local missing=()
  for cmd in podman debootstrap runc gcc; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
  ((${#missing[@]} == 0)) || die "missing ${missing[*]}: run hack/install-node-deps.sh (Debian 12 packages)"
}

# pip inside a build sees the same package sources as pip here: local wheel folders and file:// indexes
# are mounted read-only and named in a pip.conf mounted at /etc/pip.conf; the host's CA bundle is mounted
# for PyPI behind a TLS-inspecting proxy.
build_volumes=()
pip_sources() {
  local conf; conf=$(mktemp -d)/pip.conf
  local links extra
  links=$(pip3 config get global.find-links 2>/dev/null || true)
  extra=$(pip3 config get global.extra-index-url 2>/dev/null || true)
  { echo "[global]"; [[ -n $links ]] && echo "find-links = $links"; [[ -n $extra ]] && echo "extra-index-url = $extra"; } > "$conf"
  build_volumes=(--volume "$conf:/etc/pip.conf:ro")
  for path in $links $extra; do
    path=${path#file://}; path=${path%/simple}
    [[ -d $path ]] && build_volumes+=(--volume "$path:$path:ro")
  done
  [[ -f /etc/ssl/certs/ca-certificates.crt ]] \
    && build_volumes+=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
  return 0
}

timed() { local t0=$SECONDS; "$@"; log "$1 ${2:-}: $((SECONDS - t0)) s"; }

build_base() {
  local key; key=$( (echo "$base_packages $mirror"; declare -f build_base) | sha256sum | cut -c1-12)
  if [[ $(podman image inspect --format '{{index .Labels "lvr.base.key"}}' "$base" 2>/dev/null) == "$key" ]]; then
    return
  fi
  local root; root=$(mktemp -d)
  log "debootstrap bookworm minbase + $base_packages (about a minute)"
  debootstrap --variant=minbase --include="$base_packages" bookworm "$root" "$mirror" >"$root.log" 2>&1 \
    || { tail -20 "$root.log" >&2; die "debootstrap failed (log $root.log); is $mirror reachable?"; }
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
  tar -C "$root" -c . | podman import --quiet \
    --change "ENV PIP_BREAK_SYSTEM_PACKAGES=1" --change "ENV PYTHONUNBUFFERED=1" --change "LABEL lvr.base.key=$key" \
    --change 'CMD ["/bin/bash"]' - "$base" >/dev/null
  rm -rf "$root" "$root.log"
}

build_pause() {
  local dir; dir=$(mktemp -d)
  gcc -Os -static -o "$dir/pause" "$here/images/pause.c" || die "gcc -static failed (install libc6-dev)"
  podman build --quiet --format docker -f "$here/images/Dockerfile.pause" -t localhost/lvr-pause:3 "$dir" >/dev/null
  rm -rf "$dir"
}

build_operator() {
  podman build --quiet --format docker "${build_volumes[@]}" --build-arg BASE="$base" \
    -f "$repo/Dockerfile" -t localhost/longvideo-rl/operator:dev "$repo" >/dev/null
}

build_trainer() {
  podman build --quiet --format docker "${build_volumes[@]}" --build-arg BASE="$base" --build-arg TORCH_SPEC=torch==2.13.0 \
    --build-arg FLASH_ATTN= -f "$repo/images/trainer/Dockerfile" -t localhost/longvideo-rl/trainer:cpu "$repo" >/dev/null
}

# One docker-archive per image, named by its ID, so that a node imports an image only when it changed.
save() {
  local ref=$1 id; id=$(podman image inspect --format '{{.Id}}' "$ref" | cut -c1-16)
  local name; name=$(echo "$ref" | tr '/:' '__')
  local archive=$cache/$name-$id.tar
  if [[ ! -f $archive ]]; then
    rm -f "$cache/$name"-*.tar
    podman save --quiet --format docker-archive -o "$archive.tmp" "$ref" && mv "$archive.tmp" "$archive"
  fi
}

main() {
  preflight
  mkdir -p "$cache"
  exec 9>"$cache/.lock"
  flock 9
  pip_sources
  local wanted=("$@")
  ((${#wanted[@]})) || wanted=(base pause operator trainer)
  for what in "${wanted[@]}"; do
    case $what in
      base) timed build_base ;;
      pause) timed build_pause; save localhost/lvr-pause:3 ;;
      operator) timed build_base; timed build_operator; save localhost/longvideo-rl/operator:dev ;;
      trainer) timed build_base; timed build_trainer; save localhost/longvideo-rl/trainer:cpu ;;
      *) die "unknown image '$what' (base, pause, operator, trainer)" ;;
    esac
  done
  echo "$cache"
}
main "$@"
