"""Format and accuracy rewards, their weighted total, the registry and custom `module:function` rewards."""

from __future__ import annotations

import sys
import textwrap

import pytest

from lvr_trainer.algo.kinds import AnswerKind, RewardName
from lvr_trainer.algo.rewards import (
    REWARDS, WeightedReward, accuracy_reward, format_reward, normalize_text, parse_number, register_reward,
    resolve_reward,
)

GOOD = "<think>The cup moves left, then right.</think>\n<answer>B</answer>"


def test_format_reward():
    assert format_reward(GOOD) == 1.0
    assert format_reward("<answer>B</answer>") == 0.0
    assert format_reward("<think>r</think><answer>B</answer>!") == 0.0
    assert format_reward("") == 0.0


@pytest.mark.parametrize("inner", ["B", "(B)", "B.", "B) the cup", "Option B", "b", " (b) ", "option b."])
def test_mc_accuracy_accepted_forms(inner):
    assert accuracy_reward(f"<think>t</think><answer>{inner}</answer>", "B") == 1.0
    assert accuracy_reward(f"<think>t</think><answer>{inner}</answer>", "C") == 0.0


def test_mc_accuracy_uses_the_last_span_and_needs_one():
    assert accuracy_reward("<answer>A</answer> no wait <answer>B</answer>", "B") == 1.0
    assert accuracy_reward("<answer>B</answer> no wait <answer>A</answer>", "B") == 0.0
    assert accuracy_reward("The answer is B.", "B") == 0.0  # no span: 0 even though B is stated
    assert accuracy_reward("<answer></answer>", "B") == 0.0
    assert accuracy_reward("<answer>B", "B") == 0.0  # cut off before </answer>


def test_mc_accuracy_reference_answer_forms_and_errors():
    assert accuracy_reward("<answer>B</answer>", "b") == 1.0
    assert accuracy_reward("<answer>B</answer>", "(B)") == 1.0
    with pytest.raises(ValueError, match="not one of the option letters"):
        accuracy_reward("<answer>B</answer>", "E")


@pytest.mark.parametrize("text, value", [
    ("42", 42.0), ("-3", -3.0), ("1,234.5 m", 1234.5), ("about 2e-3", 0.002), (".5", 0.5), ("3/4", 0.75),
    ("$12", 12.0), ("45%", 45.0), ("x = 7 or 8", 7.0), ("none", None), ("1/0", None),
])
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_number_accuracy_relative_tolerance():
    assert accuracy_reward("<answer>100.005</answer>", "100", "number") == 1.0  # |d| / 100 = 5e-5 <= 1e-4
    assert accuracy_reward("<answer>100.02</answer>", "100", "number") == 0.0  # 2e-4 > 1e-4
    assert accuracy_reward("<answer>100.02</answer>", "100", "number", rel_tol=1e-3) == 1.0
    assert accuracy_reward("<answer>0</answer>", "0", AnswerKind.number) == 1.0
    assert accuracy_reward("<answer>about 12 seconds</answer>", "12", "number") == 1.0
    assert accuracy_reward("<answer>twelve</answer>", "12", "number") == 0.0
    assert accuracy_reward("12", "12", "number") == 0.0  # no span
    with pytest.raises(ValueError, match="holds no number"):
        accuracy_reward("<answer>1</answer>", "n/a", "number")


def test_normalize_text():
    assert normalize_text("  The Red,  CAR! ") == "red car"
    assert normalize_text("an Apple") == "apple"
    assert normalize_text("ｆｕｌｌ width") == "full width"  # NFKC


def test_text_accuracy():
    assert accuracy_reward("<answer> the red car.</answer>", "Red car", "text") == 1.0
    assert accuracy_reward("<answer>blue car</answer>", "Red car", "text") == 0.0
    assert accuracy_reward("red car", "red car", "text") == 0.0


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown answer kind 'bool'; use one of mc, number, text"):
        accuracy_reward("<answer>B</answer>", "B", "bool")


def test_weighted_total_default_is_09_accuracy_01_format():
    w = WeightedReward.from_weights()
    assert w(GOOD, "B") == (pytest.approx(1.0), {"reward/accuracy": 1.0, "reward/format": 1.0})
    assert w(GOOD, "A")[0] == pytest.approx(0.1)  # well formed, wrong
    assert w("<answer>B</answer>", "B")[0] == pytest.approx(0.9)  # right, no <think>
    assert w("B", "B")[0] == 0.0


def test_score_batch_means():
    w = WeightedReward.from_weights({"accuracy": 1.0, "format": 0.5})
    totals, metrics = w.score_batch([GOOD, GOOD, "<answer>B</answer>", "nothing"], ["B", "A", "B", "B"])
    assert totals == pytest.approx([1.5, 0.5, 1.0, 0.0])
    assert metrics == pytest.approx({"reward/accuracy": 0.5, "reward/format": 0.5, "reward/total": 0.75})
    with pytest.raises(ValueError, match="must align"):
        w.score_batch([GOOD], ["A", "B"])


def test_registry_holds_the_builtins():
    assert set(REWARDS) >= {r.value for r in RewardName}
    assert resolve_reward("accuracy") is accuracy_reward
    assert resolve_reward("format") is format_reward


def test_unknown_reward_name_suggests():
    with pytest.raises(ValueError, match="unknown reward 'acuracy'; did you mean 'accuracy'"):
        resolve_reward("acuracy")


def test_register_reward(monkeypatch):
    monkeypatch.setattr("lvr_trainer.algo.rewards.REWARDS", dict(REWARDS))

    @register_reward("short")
    def short(response, answer, kind):
        return 1.0 if len(response) < 10 else 0.0

    assert resolve_reward("short") is short
    assert WeightedReward.from_weights({"short": 2.0})("tiny", "A") == (2.0, {"reward/short": 1.0})
    with pytest.raises(ValueError, match="already registered"):
        register_reward("short")(lambda r, a, k: 0.0)
    with pytest.raises(TypeError, match="must accept three positional arguments"):
        register_reward("bad")(lambda response: 0.0)


@pytest.fixture
def custom_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent("""
        def length_penalty(response, answer, kind):
            return -len(response) / 100

        def two_args(response, answer):
            return 0.0

        NOT_A_FUNCTION = 3

        class Holder:
            @staticmethod
            def nested(response, answer, kind):
                return 0.5
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_rewards"
    sys.modules.pop("my_rewards", None)


def test_custom_reward_by_module_path(custom_module):
    fn = resolve_reward("my_rewards:length_penalty")
    assert fn("x" * 50, "A", "mc") == -0.5
    assert resolve_reward("my_rewards:Holder.nested")("", "", "mc") == 0.5
    total, scores = WeightedReward.from_weights({"accuracy": 1.0, "my_rewards:length_penalty": 0.1})(
        "<answer>A</answer>", "A")
    assert total == pytest.approx(1.0 - 0.1 * 18 / 100)
    assert scores["reward/my_rewards:length_penalty"] == pytest.approx(-0.18)


def test_custom_reward_errors(custom_module):
    with pytest.raises(ValueError, match="cannot import module 'no_such_mod'.*PYTHONPATH"):
        resolve_reward("no_such_mod:f")
    with pytest.raises(ValueError, match="has no 'missing'; its functions: .*length_penalty"):
        resolve_reward("my_rewards:missing")
    with pytest.raises(TypeError, match="not a function"):
        resolve_reward("my_rewards:NOT_A_FUNCTION")
    with pytest.raises(TypeError, match=r"signature is \(response, answer\)"):
        resolve_reward("my_rewards:two_args")
    with pytest.raises(ValueError, match="must look like 'package.module:function'"):
        resolve_reward("my_rewards:")


def test_weights_must_be_finite_and_present():
    with pytest.raises(ValueError, match="finite"):
        WeightedReward.from_weights({"accuracy": float("nan")})
    with pytest.raises(ValueError, match="at least one"):
        WeightedReward.from_weights({})


def test_weighted_reward_binds_the_number_tolerance():
    loose = WeightedReward.from_weights({"accuracy": 1.0}, rel_tol=1e-2)
    assert loose("<answer>100.5</answer>", "100", "number")[0] == 1.0
    assert WeightedReward.from_weights({"accuracy": 1.0})("<answer>100.5</answer>", "100", "number")[0] == 0.0
