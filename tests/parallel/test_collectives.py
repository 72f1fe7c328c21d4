"""Collectives go through lvr_trainer.parallel.collectives, which checks tensors against the backend.

NCCL takes CUDA tensors only and gloo takes CPU ones, so a tensor made without a device (a CPU tensor)
passes every CPU test and fails the first 8-GPU run. The scan below fails on any collective called
directly, and the faked-NCCL test shows the check names the call and the fix.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from lvr_trainer.parallel import collectives

PACKAGE = Path(__file__).resolve().parents[2] / "trainer" / "lvr_trainer"
COLLECTIVES = {"all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "all_to_all",
               "all_to_all_single", "broadcast", "broadcast_object_list", "reduce_scatter", "reduce_scatter_tensor",
               "reduce", "gather", "scatter", "barrier"}


def _direct_calls(path: Path) -> list[str]:
    """`dist.<collective>(...)` or `torch.distributed.<collective>(...)` calls in one module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in COLLECTIVES:
            owner = ast.unparse(node.func.value)
            if owner in ("dist", "torch.distributed"):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {owner}.{node.func.attr}")
    return found


def test_no_collective_bypasses_the_device_check():
    calls = [c for p in sorted(PACKAGE.rglob("*.py")) if p.name != "collectives.py" for c in _direct_calls(p)]
    assert not calls, "call these through lvr_trainer.parallel.collectives:\n" + "\n".join(calls)


def test_the_scan_sees_a_direct_call(tmp_path):
    bad = PACKAGE / "_scan_probe.py"
    try:
        bad.write_text("import torch.distributed as dist\ndef f(t):\n    dist.all_reduce(t)\n")
        assert _direct_calls(bad) == ["lvr_trainer/_scan_probe.py:3: dist.all_reduce"]
    finally:
        bad.unlink()


def test_a_cpu_tensor_on_an_nccl_group_is_named_with_the_fix(monkeypatch):
    monkeypatch.setattr(collectives, "_backend", lambda group: "nccl")
    with pytest.raises(collectives.CollectiveDeviceError, match=r"all_reduce over a nccl group got a tensor on "
                       r"cpu; nccl takes cuda tensors: create it with .*group_tensor"):
        collectives.check_devices("all_reduce", [torch.tensor([1.0])])
    monkeypatch.setattr(collectives, "_backend", lambda group: "gloo")
    collectives.check_devices("all_reduce", [torch.tensor([1.0])])         # gloo: CPU is right
    with pytest.raises(collectives.CollectiveDeviceError, match="gloo takes cpu tensors"):
        collectives.check_devices("all_gather", [torch.empty(1, device="meta")])
    assert collectives.group_tensor([1, 2]).device.type == "cpu"
