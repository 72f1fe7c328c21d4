"""`lvr eval` end to end on a tiny model: results.json / results.md / replies.jsonl / the plot."""

from __future__ import annotations

import json
import subprocess
import sys

from lvr_trainer.data.synth import SynthSpec, synthesise


def test_lvr_eval_writes_results_for_several_frame_counts(tmp_path):
    data = tmp_path / "data"
    synthesise(data, SynthSpec(videos=3, seconds=8, fps=4, width=56, height=56, seed=2))
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "lvr_trainer.cli", "eval", "--model", "preset:tiny", "--data",
           str(data / "test.jsonl"), "--frames", "4", "8", "--max-pixels", "3136", "--max-new-tokens", "8",
           "--cache", str(tmp_path / "cache"), "--out", str(out), "--plot", str(out / "acc.png")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["by_frames"]) == {"4", "8"}
    eight = results["by_frames"]["8"]
    assert eight["n"] == 4 and set(eight["strict"]["by_category"]) >= {"temporal", "goal", "spatial", "plot", "overall"}
    assert eight["strict"]["by_duration"]["short"]["total"] == 4
    replies = [json.loads(line) for line in (out / "replies.jsonl").read_text().splitlines()]
    assert len(replies) == 8 and all("reply" in r for r in replies)
    assert "| overall" in (out / "results.md").read_text() and "| overall" in res.stdout
    assert (out / "acc.png").read_bytes()[:4] == b"\x89PNG"


def test_lvr_eval_bad_model_path_is_a_clear_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "lvr_trainer.cli", "eval", "--model", str(tmp_path / "nope"),
                          "--data", str(tmp_path / "x.jsonl")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "not a directory" in res.stderr and "Traceback" not in res.stderr
