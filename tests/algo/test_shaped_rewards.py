"""The shaped format reward used to start GRPO from a random-init model."""

from __future__ import annotations

import pytest

from lvr_trainer.algo.rewards import format_reward
from lvr_trainer.algo.shaped_rewards import format_progress, tag_skeleton_similarity


@pytest.mark.parametrize("reply", ["<think>a b</think><answer>B</answer>", " <think></think> <answer>(C)</answer>\n"])
def test_well_formatted_replies_get_full_credit(reply):
    assert format_reward(reply) == 1.0
    assert format_progress(reply) == 1.0


def test_partial_credit_orders_replies_by_closeness():
    ladder = ["red blue", "<think> red", "<think> red </think>", "<think> red </think> <answer> B",
              "<think> red </think> <answer> B </answer>"]
    scores = [format_progress(r) for r in ladder]
    assert scores == sorted(scores) and len(set(scores)) == len(scores)
    assert scores[0] == 0.0


def test_repeated_and_misordered_tags_lose_credit():
    assert tag_skeleton_similarity("<think></think><answer></answer>") == 1.0
    assert tag_skeleton_similarity("<think><think><think></think><answer></answer>") == pytest.approx(8 / 10)
    assert tag_skeleton_similarity("</answer><answer></think><think>") < 0.5
    assert format_progress("<think> <think> x </answer>") == pytest.approx((2 * 2 / 7 + 1 + 1) / 3)


def test_letter_probes_read_the_last_answer_letter():
    from lvr_trainer.algo.shaped_rewards import answers_a, answers_c

    assert answers_a("<think>x</think><answer>A</answer>") == 1.0
    assert answers_a("<think>x</think><answer> (a) red</answer>") == 1.0
    assert answers_a("<answer>A</answer> then <answer>B</answer>") == 0.0
    assert answers_a("<think>A</think><answer>Apple</answer>") == 0.0
    assert answers_a("no answer A") == 0.0
    assert answers_c("<think>A</think><answer>C</answer>") == 1.0
    assert answers_c("<think>C</think><answer>A</answer>") == 0.0
