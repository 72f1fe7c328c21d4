"""A small synthetic dataset made once per test session (real H.264 files)."""

from __future__ import annotations

import pytest

from lvr_trainer.data.synth import SynthSpec, synthesise

SMALL = SynthSpec(videos=6, seconds=16, fps=8, width=112, height=112, events=8, seed=7)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    manifest = synthesise(out, SMALL)
    return out, manifest
