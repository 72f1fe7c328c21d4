"""`lvr eval` scoring: strict and lenient scorers, per-category / per-duration accuracy, the results table."""

from __future__ import annotations

import json

import pytest

from lvr_trainer.algo.rewards import accuracy_reward
from lvr_trainer.eval.scoring import (
    DURATION_BUCKETS, SCORERS, Accuracy, ScorerName, accuracy_by_category, accuracy_by_duration,
    duration_bucket, results_table, score_reply, summarize, well_formed_rate,
)


@pytest.mark.parametrize("reply, strict, lenient", [
    ("<think>t</think><answer>B</answer>", "B", "B"),
    ("<think>t</think><answer>b</answer>", "B", "B"),  # lowercase
    ("<think>t</think><answer>  (B)  \n</answer>", "B", "B"),  # whitespace, parentheses
    ("<answer>A</answer> then <answer>C</answer>", "C", "C"),  # several spans: the last one
    ("<think>t</think><answer></answer>", None, None),  # an empty span
    ("<think>t</think><answer></answer> so C", None, "C"),
    ("<think>t</think><answer>D</answer> I am fairly sure.", "D", "D"),  # text after </answer>
    ("<answer>Option B</answer>", "B", "B"),
    ("The answer is C.", None, "C"),  # no span: strict reads nothing
    ("<think>t</think><answer>C", None, "C"),  # cut off before </answer>: only the lenient scorer reads C
    ("An Apple on a CD", None, None),  # letters inside words do not count
    ("A cat sits. Best guess: D", None, "D"),  # the article A does not count
    ("<answer>The red car</answer>", None, None),
])
def test_scorers(reply, strict, lenient):
    assert SCORERS[ScorerName.strict](reply, "ABCD") == strict
    assert SCORERS[ScorerName.lenient](reply, "ABCD") == lenient


def test_strict_scorer_is_the_mc_reward():
    replies = ["<answer>B</answer>", "<answer>(b) x</answer>", "B", "<answer>Option B is it</answer>",
               "<answer>A</answer><answer>B.</answer>", "<answer>b is it</answer>"]
    for reply in replies:
        scored = score_reply(reply, "B")
        assert scored.correct("strict") == (accuracy_reward(reply, "B", "mc") == 1.0), reply


def test_score_reply_validates_the_answer():
    with pytest.raises(ValueError, match="question q7: answer 'E' is not one of A, B, C, D"):
        score_reply("<answer>E</answer>", "E", id="q7")
    assert score_reply("<answer>e</answer>", "e", letters="ABCDE").correct("strict")


@pytest.mark.parametrize("seconds, bucket", [
    (11, "short"), (120, "short"), (120.5, "medium"), (240, "medium"), (900, "medium"), (901, "long"),
    (1800, "long"), (3600, "long"), (7200, "long"),
])
def test_duration_bucket_videomme_edges(seconds, bucket):
    assert duration_bucket(seconds) == bucket


def test_duration_bucket_custom_edges():
    assert duration_bucket(5, (4, 8)) == "medium" and duration_bucket(9, (4, 8)) == "long"


def _items():
    return [
        score_reply("<answer>A</answer>", "A", id="1", category="temporal", duration=60),  # both right
        score_reply("answer: A", "A", id="2", category="temporal", duration=300),  # lenient only
        score_reply("<answer>B</answer>", "A", id="3", category="goal", duration=2000),  # both wrong
        score_reply("<answer>(C)</answer>", "C", id="4", category="spatial", duration=None),  # right, no duration
    ]


def test_accuracy_by_category_and_overall():
    items = _items()
    strict = accuracy_by_category(items, "strict")
    assert list(strict) == ["temporal", "goal", "spatial", "plot", "other", "overall"]
    assert strict["temporal"] == Accuracy(1, 2) and strict["temporal"].value == 0.5
    assert strict["goal"] == Accuracy(0, 1) and strict["spatial"] == Accuracy(1, 1)
    assert strict["plot"] == Accuracy(0, 0) and strict["plot"].value is None
    assert strict["overall"] == Accuracy(2, 4)
    lenient = accuracy_by_category(items, ScorerName.lenient)
    assert lenient["temporal"] == Accuracy(2, 2) and lenient["overall"] == Accuracy(3, 4)


def test_accuracy_by_duration_skips_unknown_durations():
    by = accuracy_by_duration(_items(), "strict")
    assert list(by) == list(DURATION_BUCKETS)
    assert by == {"short": Accuracy(1, 1), "medium": Accuracy(0, 1), "long": Accuracy(0, 1)}


def test_well_formed_rate():
    assert well_formed_rate(_items()) == 0.75  # item 2 states no <answer> span
    assert well_formed_rate([]) == 0.0


def test_summarize_is_json_and_the_table_shows_non_empty_rows():
    summary = summarize(_items())
    assert json.loads(json.dumps(summary)) == summary
    assert summary["n"] == 4 and summary["well_formed_rate"] == 0.75
    assert summary["strict"]["by_category"]["overall"] == {"correct": 2, "total": 4, "accuracy": 0.5}
    assert summary["lenient"]["by_duration"]["medium"] == {"correct": 1, "total": 1, "accuracy": 1.0}
    assert summary["strict"]["by_category"]["plot"]["accuracy"] is None
    table = results_table(summary)
    lines = table.splitlines()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("|")]
    assert rows[0] == ["group", "n", "strict %", "lenient %"]
    body = {r[0]: r[1:] for r in rows[2:]}
    assert list(body) == ["temporal", "goal", "spatial", "overall", "duration: short", "duration: medium",
                          "duration: long"]  # plot and other have no items and are left out
    assert body["overall"] == ["4", "50", "75"]
    assert body["duration: medium"] == ["1", "0", "100"]
    assert lines[-1] == "well-formed answers: 75.0% of 4"
