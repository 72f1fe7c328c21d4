#!/usr/bin/env bash
# Build the project's virtualenv from nothing: system packages when missing, CPU torch, then every extra.
# Usage: hack/install-deps.sh PYTHON VENV TORCH_SPEC
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}
torch_spec=${3:-torch==2.13.0}

# System packages: only what the wheels do not bring. Installed when missing, with a clear message
# when they cannot be (not root, no apt).
apt_packages=()
for pkg in "${LVR_APT_PACKAGES[@]:-}"; do
  [[ -n "$pkg" ]] && ! dpkg -s "$pkg" >/dev/null 2>&1 && apt_packages+=("$pkg")
done
if ((${#apt_packages[@]})); then
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "install-deps: need root and apt-get to install: ${apt_packages[*]}; install them, then re-run" >&2
    exit 1
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_packages[@]}"
fi

if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
  echo "install-deps: $python lacks venv/ensurepip (Debian: apt-get install python3-venv)" >&2
  exit 1
fi
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip
# torch first and pinned, so that the extras' `torch>=…` is already satisfied and never pulls a CUDA build.
"${pip[@]}" install "$torch_spec"
"${pip[@]}" install -e ".[trainer,operator,dev]"
echo "install-deps: $venv ready ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
