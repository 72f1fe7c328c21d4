"""The paired comparison that decides whether RL improved a checkpoint, on hand-made outcomes."""

from __future__ import annotations

import math

import pytest

from lvr_trainer.eval.compare import format_comparison, main, paired_gain


def _rows(outcomes: str, category: str = "temporal", frames: int = 16) -> list[dict]:
    """'1' = answered right, '0' = wrong; question ids q0, q1, ..."""
    return [{"id": f"q{i}", "frames": frames, "category": category, "answer": "A",
             "strict": "A" if o == "1" else "B"} for i, o in enumerate(outcomes)]


def test_counts_flips_and_accuracies():
    g = paired_gain(_rows("110010"), _rows("011011"))
    assert (g.n, g.right_before, g.right_after, g.gained, g.lost) == (6, 3, 4, 2, 1)
    assert g.accuracy_before == 0.5 and g.accuracy_after == pytest.approx(4 / 6)
    assert g.z == pytest.approx(1 / math.sqrt(3))
    # P(X >= 2 | X ~ Bin(3, 1/2)) = (3 + 1) / 8
    assert g.p_value == pytest.approx(0.5)


def test_a_real_gain_is_significant_and_a_reshuffle_is_not():
    # 30 gains, 5 losses among 200: z = 25 / sqrt(35) = 4.2
    before = "0" * 30 + "1" * 5 + "1" * 80 + "0" * 85
    after = "1" * 30 + "0" * 5 + "1" * 80 + "0" * 85
    g = paired_gain(_rows(before), _rows(after))
    assert g.z == pytest.approx(25 / math.sqrt(35)) and g.p_value < 1e-4
    # the same accuracy reached by trading 20 questions for 20 others: no evidence either way
    shuffled = paired_gain(_rows("0" * 20 + "1" * 20), _rows("1" * 20 + "0" * 20))
    assert shuffled.z == 0 and shuffled.p_value > 0.5
    assert paired_gain(_rows("0101"), _rows("0101")).z == 0 and paired_gain(_rows("01"), _rows("01")).p_value == 1


def test_only_shared_questions_and_one_category_count():
    before = _rows("00", "plot") + [{"id": "x", "frames": 16, "category": "goal", "answer": "A", "strict": "A"}]
    after = _rows("11", "plot")
    assert paired_gain(before, after).n == 2
    assert paired_gain(before, after, "plot").gained == 2
    with pytest.raises(ValueError, match="share no question ids"):
        paired_gain(_rows("1", frames=16), _rows("1", frames=32))


def test_table_and_cli(tmp_path, capsys):
    import json

    def rows(goal: str, plot: str) -> list[dict]:
        return [{**r, "id": r["id"] + r["category"]} for r in _rows(goal, "goal") + _rows(plot, "plot")]

    before, after = rows("0011", "01"), rows("0111", "11")
    for name, data in (("b.jsonl", before), ("a.jsonl", after)):
        (tmp_path / name).write_text("\n".join(json.dumps(r) for r in data))
    table = format_comparison(before, after)
    assert "| goal" in table and "| plot" in table and "| overall" in table
    assert main([str(tmp_path / "b.jsonl"), str(tmp_path / "a.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "wrong->right" in out and "| overall  | 6 | 50.0%  | 83.3%  |            2 |            0 | 1.41 |" in out
