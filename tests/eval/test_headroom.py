"""GRPO headroom (greedy vs. sampled accuracy) against hand-computed cases, and `lvr eval --samples`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lvr_trainer.data.synth import SynthSpec, synthesise
from lvr_trainer.eval.headroom import SampledQuestion, headroom, headroom_by_category, headroom_table


def q(category, answer, greedy, *samples):
    return SampledQuestion(category, answer, greedy, tuple(samples))


def test_headroom_hand_computed():
    questions = [
        q("temporal", "A", "A", "A", "A", "B", "A"),     # greedy right, sampled 3/4, majority A
        q("temporal", "B", "C", "B", "B", "C", None),    # greedy wrong, a sample fixes it, majority B
        q("goal", "C", "D", "D", "D", "A", "D"),         # greedy wrong, no sample right
        q("goal", "D", "D", None, None, None, None),     # greedy right, nothing readable sampled
    ]
    h = headroom(questions)
    assert h.n == 4
    assert h.greedy == pytest.approx(2 / 4)
    assert h.sampled == pytest.approx((3 / 4 + 2 / 4 + 0 + 0) / 4)
    assert h.pass_at_k == pytest.approx(2 / 4)
    assert h.majority_at_k == pytest.approx(2 / 4)    # A right, B right, D wrong, None wrong
    assert h.greedy_wrong == 2 and h.greedy_wrong_solved == pytest.approx(1 / 2)


def test_majority_ties_go_to_the_first_sampled_choice():
    assert q("plot", "A", "A", "B", "A", "A", "B").majority == "B"
    assert q("plot", "A", "A", None, "C", "A", "C").majority == "C"
    assert q("plot", "A", "A", None, None).majority is None


def test_headroom_by_category_and_table():
    questions = [q("temporal", "A", "A", "A", "B"), q("spatial", "B", "A", "A", "A")]
    table = headroom_by_category(questions)
    assert list(table) == ["spatial", "temporal", "overall"]
    assert table["spatial"].greedy_wrong_solved == 0.0
    assert table["temporal"].greedy_wrong == 0 and table["temporal"].greedy_wrong_solved is None
    text = headroom_table(table, k=2, temperature=0.7)
    assert "pass@2" in text and "majority@2" in text and "T=0.7" in text and "| overall" in text
    with pytest.raises(ValueError, match="at least one question"):
        headroom([])


def test_lvr_eval_samples_writes_headroom(tmp_path):
    data = tmp_path / "data"
    synthesise(data, SynthSpec(videos=3, seconds=8, fps=4, width=56, height=56, seed=3))
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "lvr_trainer.cli", "eval", "--model", "preset:tiny", "--data",
           str(data / "test.jsonl"), "--frames", "8", "--max-pixels", "3136", "--max-new-tokens", "6",
           "--cache", str(tmp_path / "cache"), "--out", str(out), "--samples", "3", "--temperature", "1.0"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    payload = json.loads((out / "headroom.json").read_text())
    overall = payload["by_frames"]["8"]["overall"]
    greedy = json.loads((out / "results.json").read_text())["by_frames"]["8"]["strict"]["by_category"]["overall"]
    assert payload["samples"] == 3 and overall["n"] == greedy["total"]
    assert overall["greedy"] == pytest.approx(greedy["accuracy"] or 0.0)
    assert 0.0 <= overall["sampled"] <= overall["pass_at_k"] <= 1.0
    assert "GRPO headroom" in res.stdout and "majority@3" in res.stdout


def test_lvr_eval_samples_needs_a_positive_temperature(tmp_path):
    data = tmp_path / "data"
    synthesise(data, SynthSpec(videos=3, seconds=4, fps=4, width=56, height=56, seed=4))
    res = subprocess.run([sys.executable, "-m", "lvr_trainer.cli", "eval", "--model", "preset:tiny", "--data",
                          str(data / "test.jsonl"), "--samples", "2", "--temperature", "0"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "--temperature > 0" in res.stderr and "Traceback" not in res.stderr
