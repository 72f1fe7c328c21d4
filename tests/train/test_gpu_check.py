"""bench/gpu_check.py runs the trainer's packed shared-prefix step (old log-probs, then a GRPO update with a
real optimizer step) on the CPU with the tiny preset: the GPU check cannot rot between GPU runs."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_the_gpu_check_runs_the_trainers_step_on_the_cpu(tmp_path, capsys):
    import json

    sys.path.insert(0, str(BENCH))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(BENCH))
    out = tmp_path / "rows.json"
    assert gpu_check.main(["--shape", "tiny", "--tokens", "256", "--device", "cpu", "--group", "4",
                           "--reply-tokens", "8", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["phase"] for r in rows] == ["old_logprobs", "update"] and all(r["seconds"] > 0 for r in rows)
    assert "| update |" in capsys.readouterr().out
